package harness

import (
	"context"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"time"
)

// CPUSnapshot is the machine's busy CPU time and the share of it spent by
// the benchmark's own processes, at one instant.
type CPUSnapshot struct {
	at   time.Time
	busy time.Duration
	ours time.Duration
}

// Snapshot reads the busy time of every CPU from /proc/stat and the CPU
// time of this process and of every process the Env started.
func (e *Env) Snapshot() (CPUSnapshot, error) {
	busy, err := machineBusy()
	if err != nil {
		return CPUSnapshot{}, err
	}
	ours, _, err := cpuTime(os.Getpid())
	if err != nil {
		return CPUSnapshot{}, err
	}
	e.procsMu.Lock()
	procs := append([]*Proc(nil), e.procs...)
	e.procsMu.Unlock()
	for _, p := range procs {
		if p.Exited() {
			continue
		}
		// A process may end between the check and the read. Its time is
		// then missing from ours, which only overstates others' share.
		if u, err := TreeUsage(p.PID()); err == nil {
			ours += u.CPU
		}
	}
	return CPUSnapshot{at: time.Now(), busy: busy, ours: ours}, nil
}

// OthersShare returns the CPU time that processes outside the benchmark
// spent between prev and s, as a share of all CPUs over that time: 0.5 on
// a two-CPU machine means one CPU was busy with other work.
func (s CPUSnapshot) OthersShare(prev CPUSnapshot) float64 {
	return s.share(prev, (s.busy-prev.busy)-(s.ours-prev.ours))
}

// BusyShare returns the share of all CPUs that was busy between prev and
// s, the benchmark's own processes included.
func (s CPUSnapshot) BusyShare(prev CPUSnapshot) float64 {
	return s.share(prev, s.busy-prev.busy)
}

// share divides d by the CPU time all CPUs had between prev and s.
func (s CPUSnapshot) share(prev CPUSnapshot, d time.Duration) float64 {
	wall := s.at.Sub(prev.at)
	if wall <= 0 {
		return 0
	}
	return max(float64(d)/float64(wall*time.Duration(runtime.NumCPU())), 0)
}

// WaitQuiet samples the CPU use of other processes over spans of sample
// until it is at most threshold (a share of all CPUs) or maxWait passes,
// and returns the last share measured.
func (e *Env) WaitQuiet(
	ctx context.Context,
	threshold float64,
	sample time.Duration,
	maxWait time.Duration,
) (float64, error) {
	deadline := time.Now().Add(maxWait)
	for {
		before, err := e.Snapshot()
		if err != nil {
			return 0, err
		}
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-time.After(sample):
		}
		after, err := e.Snapshot()
		if err != nil {
			return 0, err
		}
		share := after.OthersShare(before)
		if share <= threshold || !time.Now().Before(deadline) {
			return share, nil
		}
	}
}

// machineBusy returns the non-idle time of all CPUs from the first line
// of /proc/stat: user, nice, system, irq, softirq and steal.
func machineBusy() (time.Duration, error) {
	data, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, fmt.Errorf("read /proc/stat: %w", err)
	}
	line, _, _ := strings.Cut(string(data), "\n")
	fields := strings.Fields(line)
	if len(fields) < 9 || fields[0] != "cpu" {
		return 0, fmt.Errorf("parse /proc/stat: unexpected first line %q", line)
	}
	var ticks int64
	for _, i := range []int{1, 2, 3, 6, 7, 8} {
		n, err := strconv.ParseInt(fields[i], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("parse /proc/stat field %d: %w", i, err)
		}
		ticks += n
	}
	return time.Duration(ticks) * time.Second / userHZ, nil
}
