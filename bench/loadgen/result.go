package loadgen

import (
	"errors"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/valyala/fasthttp"
)

// Result is the outcome of a closed- or open-loop phase.
type Result struct {
	// Requests counts the responses with status 200.
	Requests int64
	// Errors counts failed requests: transport errors and other statuses.
	Errors int64
	// FirstError describes the first failure, or is empty when none failed.
	FirstError string
	// ErrorKinds counts the failures by kind: "status N" for a response
	// with another status than 200, "timeout" for a request that got no
	// response within requestTimeout, and "transport" for other errors,
	// such as a refused or closed connection.
	ErrorKinds map[string]int64
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

// errorLog counts failures by kind and keeps the first one.
type errorLog struct {
	count atomic.Int64
	once  sync.Once
	first string

	// kindsMu guards kinds.
	kindsMu sync.Mutex
	kinds   map[string]int64
}

func (l *errorLog) add(err error) {
	l.count.Add(1)
	l.once.Do(func() { l.first = err.Error() })
	kind := errorKind(err)
	l.kindsMu.Lock()
	if l.kinds == nil {
		l.kinds = map[string]int64{}
	}
	l.kinds[kind]++
	l.kindsMu.Unlock()
}

// errorKind names the kind of a failed request for Result.ErrorKinds.
func errorKind(err error) string {
	var status *StatusError
	switch {
	case errors.As(err, &status):
		return "status " + strconv.Itoa(status.Status)
	case errors.Is(err, fasthttp.ErrTimeout):
		return "timeout"
	}
	return "transport"
}

// firstError returns the first failure. Call it after every worker ended.
func (l *errorLog) firstError() string {
	return l.first
}

// errorKinds returns the failures by kind, or nil when none failed. Call
// it after every worker ended.
func (l *errorLog) errorKinds() map[string]int64 {
	return l.kinds
}

// errorPause slows a worker down after a failure, so that a target that
// refuses connections does not turn the phase into a busy loop.
const errorPause = time.Millisecond
