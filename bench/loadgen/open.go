package loadgen

import (
	"context"
	"sync"
	"time"
)

// OpenLoop is a fixed-rate phase: requests are due at Rate per second,
// evenly spaced, whether or not earlier ones have completed.
type OpenLoop struct {
	Rate     float64
	Duration time.Duration
	// Workers is the number of senders: worker w sends requests w,
	// w+Workers, and so on. It must exceed Rate times the slowest latency,
	// or requests leave late, and the lateness counts in their latency.
	Workers int
	Request Request
}

// RunOpen runs the phase. Latency counts from the time a request was due,
// not from the time it was sent, so a stalled target cannot hide its
// queue by slowing the generator down.
func RunOpen(ctx context.Context, c *Client, cfg OpenLoop) Result {
	total := int(cfg.Rate * cfg.Duration.Seconds())
	interval := time.Duration(float64(time.Second) / cfg.Rate)
	start := time.Now().Add(10 * time.Millisecond)
	parts := make([][]time.Duration, cfg.Workers)
	var errs errorLog
	var wg sync.WaitGroup
	for w := range cfg.Workers {
		wg.Go(func() {
			for i := w; i < total && ctx.Err() == nil; i += cfg.Workers {
				due := start.Add(time.Duration(i) * interval)
				time.Sleep(time.Until(due))
				if err := c.Do(cfg.Request); err != nil {
					errs.add(err)
					continue
				}
				parts[w] = append(parts[w], time.Since(due))
			}
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
