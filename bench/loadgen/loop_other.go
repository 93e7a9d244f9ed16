//go:build !linux

package loadgen

import (
	"context"
	"errors"
)

// runStreamLoops returns an error on this system: the stream reader
// needs Linux's epoll.
func runStreamLoops(context.Context, *streamGen, []*streamWorker) error {
	return errors.New("stream load runs on Linux only, because it reads streams with epoll")
}
