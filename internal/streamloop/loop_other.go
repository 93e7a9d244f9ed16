//go:build !linux

package streamloop

import (
	"errors"
	"syscall"
)

var errUnsupported = errors.New("streamloop runs on Linux only")

type loop struct{}

// Available reports false: the loops need epoll.
func Available() bool { return false }

// Start returns an error on this system.
func Start(Stream) (*Handle, error) { return nil, errUnsupported }

// Cancel does nothing on this system.
func (h *Handle) Cancel() {}

// Wait returns the error of Start on this system.
func (h *Handle) Wait() Result { return Result{Err: errUnsupported} }

// Fd returns an error on this system.
func Fd(syscall.Conn) (int, error) { return -1, errUnsupported }
