package harness

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// userHZ is the unit of the CPU times in /proc/PID/stat. Linux reports
// them in USER_HZ, which is 100 on x86 and arm64.
const userHZ = 100

// Usage is the resource use of a process and its children, such as an
// nginx master and its workers.
type Usage struct {
	// CPU is user plus system time since the processes started.
	CPU time.Duration
	// System is the part of CPU spent in the kernel on the processes'
	// behalf: system calls, and the network stack's work done within them.
	System time.Duration
	// PeakRSSBytes is the sum of VmHWM, the peak resident set, over the
	// processes. Pages shared between processes count once per process,
	// so for more than one process the sum is an upper bound.
	PeakRSSBytes int64
	// Processes is how many processes were counted.
	Processes int
}

// TreeUsage returns the usage of pid and its direct children.
func TreeUsage(pid int) (Usage, error) {
	var u Usage
	for _, p := range processTree(pid) {
		cpu, sys, err := cpuTime(p)
		if err != nil {
			return Usage{}, err
		}
		hwm, err := statusKB(p, "VmHWM")
		if err != nil {
			return Usage{}, err
		}
		u.CPU += cpu
		u.System += sys
		u.PeakRSSBytes += hwm << 10
		u.Processes++
	}
	return u, nil
}

// ResetPeakRSS sets VmHWM of pid and its direct children back to their
// current resident set, by writing 5 to /proc/PID/clear_refs (Linux 4.0
// and later), so that the next TreeUsage reports the peak of one phase.
func ResetPeakRSS(pid int) error {
	for _, p := range processTree(pid) {
		path := fmt.Sprintf("/proc/%d/clear_refs", p)
		if err := os.WriteFile(path, []byte("5"), 0); err != nil {
			return fmt.Errorf("reset peak RSS of %d: %w", p, err)
		}
	}
	return nil
}

// processTree returns pid followed by the processes whose parent is pid.
func processTree(pid int) []int {
	tree := []int{pid}
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return tree
	}
	for _, e := range entries {
		child, err := strconv.Atoi(e.Name())
		if err != nil || child == pid {
			continue
		}
		fields, err := statFields(child)
		if err == nil && fields[1] == strconv.Itoa(pid) {
			tree = append(tree, child)
		}
	}
	return tree
}

// statFields returns the fields of /proc/PID/stat after the command name,
// starting with the state. fields[1] is the parent PID, and fields[11] and
// fields[12] are utime and stime.
func statFields(pid int) ([]string, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return nil, fmt.Errorf("read stat of %d: %w", pid, err)
	}
	fields, err := parseStat(data)
	if err != nil {
		return nil, fmt.Errorf("parse stat of %d: %w", pid, err)
	}
	return fields, nil
}

// parseStat splits the contents of /proc/PID/stat as statFields returns it.
func parseStat(data []byte) ([]string, error) {
	// The command name is in parentheses and may contain spaces and
	// parentheses itself, so the last ')' ends it.
	end := bytes.LastIndexByte(data, ')')
	if end < 0 {
		return nil, errors.New("no command name")
	}
	fields := strings.Fields(string(data[end+1:]))
	if len(fields) < 13 {
		return nil, fmt.Errorf("%d fields after the command name, want at least 13", len(fields))
	}
	return fields, nil
}

// cpuTime returns the user plus system time of pid, and the system time.
func cpuTime(pid int) (total, system time.Duration, err error) {
	fields, err := statFields(pid)
	if err != nil {
		return 0, 0, err
	}
	var ticks [2]int64 // utime, stime
	for i, f := range fields[11:13] {
		ticks[i], err = strconv.ParseInt(f, 10, 64)
		if err != nil {
			return 0, 0, fmt.Errorf("parse CPU time of %d: %w", pid, err)
		}
	}
	tick := time.Second / userHZ
	return time.Duration(ticks[0]+ticks[1]) * tick, time.Duration(ticks[1]) * tick, nil
}

// statusKB returns a "Key: N kB" line of /proc/PID/status.
func statusKB(pid int, key string) (int64, error) {
	data, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "status"))
	if err != nil {
		return 0, fmt.Errorf("read status of %d: %w", pid, err)
	}
	for line := range strings.Lines(string(data)) {
		rest, ok := strings.CutPrefix(line, key+":")
		if !ok {
			continue
		}
		n, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
		if err != nil {
			return 0, fmt.Errorf("parse %s of %d: %w", key, pid, err)
		}
		return n, nil
	}
	return 0, fmt.Errorf("no %s in status of %d", key, pid)
}
