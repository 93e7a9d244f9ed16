package loadgen

import (
	"context"
	"sync"
	"time"
)

// ClosedLoop is a saturation phase: Conns workers each send Request,
// wait for the response and send the next, for Duration.
type ClosedLoop struct {
	Conns    int
	Duration time.Duration
	Request  Request
}

// RunClosed runs the phase and returns once every worker has ended. A
// request still in flight at the deadline finishes and counts.
func RunClosed(ctx context.Context, c *Client, cfg ClosedLoop) Result {
	start := time.Now()
	deadline := start.Add(cfg.Duration)
	parts := make([][]time.Duration, cfg.Conns)
	var errs errorLog
	var wg sync.WaitGroup
	for i := range cfg.Conns {
		wg.Go(func() {
			parts[i] = closedWorker(ctx, c, cfg.Request, deadline, &errs)
		})
	}
	wg.Wait()

	latencies := merge(parts)
	return Result{
		Requests:   int64(len(latencies)),
		Errors:     errs.count.Load(),
		FirstError: errs.firstError(),
		ErrorKinds: errs.errorKinds(),
		Elapsed:    time.Since(start),
		Latency:    Summarize(latencies),
	}
}

func closedWorker(ctx context.Context, c *Client, r Request, deadline time.Time,
	errs *errorLog) []time.Duration {
	var latencies []time.Duration
	for ctx.Err() == nil {
		t0 := time.Now()
		if !t0.Before(deadline) {
			break
		}
		if err := c.Do(r); err != nil {
			errs.add(err)
			time.Sleep(errorPause)
			continue
		}
		latencies = append(latencies, time.Since(t0))
	}
	return latencies
}
