//go:build !unix

package proxy

import "errors"

// peekByte fails on this system, so the watch reads a byte instead.
func peekByte(int) (int, error) { return 0, errNoPeek }

// errWouldBlock is peekByte's error when nothing is waiting.
var errWouldBlock = errors.New("nothing waiting")
