package harness

import (
	"os"
	"strconv"
	"strings"
	"syscall"
)

// killLeftovers sends SIGKILL to every other process whose standard output
// is a file in the run folder. Such processes survived a crash of an
// earlier run in the same folder, or are nginx workers whose master was
// killed. Every process an Env starts writes its output there, and
// children inherit it. The environment cannot mark them, because nginx
// writes its process titles over the memory that /proc/PID/environ reads.
func (e *Env) killLeftovers() {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		e.Log.Warn("list processes for leftovers", "err", err)
		return
	}
	for _, entry := range entries {
		pid, err := strconv.Atoi(entry.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		out, err := os.Readlink("/proc/" + entry.Name() + "/fd/1")
		if err != nil || !strings.HasPrefix(out, e.Dir+string(os.PathSeparator)) {
			continue
		}
		if err := syscall.Kill(pid, syscall.SIGKILL); err == nil {
			e.Log.Warn("killed a process left by a benchmark run", "pid", pid, "output", out)
		}
	}
}
