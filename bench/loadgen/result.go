package loadgen

import (
	"sync"
	"sync/atomic"
	"time"
)

// Result is the outcome of a closed- or open-loop phase.
type Result struct {
	// Requests counts the responses with status 200.
	Requests int64
	// Errors counts failed requests: transport errors and other statuses.
	Errors int64
	// FirstError describes the first failure, or is empty when none failed.
	FirstError string
	// Elapsed is the wall time of the phase.
	Elapsed time.Duration
	// Latency summarizes the time of each successful request.
	Latency Summary
}

// Throughput returns the successful requests per second.
func (r Result) Throughput() float64 {
	if r.Elapsed <= 0 {
		return 0
	}
	return float64(r.Requests) / r.Elapsed.Seconds()
}

// errorLog counts failures and keeps the first one.
type errorLog struct {
	count atomic.Int64
	once  sync.Once
	first string
}

func (l *errorLog) add(err error) {
	l.count.Add(1)
	l.once.Do(func() { l.first = err.Error() })
}

// firstError returns the first failure. Call it after every worker ended.
func (l *errorLog) firstError() string {
	return l.first
}

// errorPause slows a worker down after a failure, so that a target that
// refuses connections does not turn the phase into a busy loop.
const errorPause = time.Millisecond
