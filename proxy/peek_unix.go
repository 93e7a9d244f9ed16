//go:build unix && !linux

package proxy

import "golang.org/x/sys/unix"

// peekByte looks at the next byte waiting on a socket without taking it
// from the socket, and does not block. It returns 0 and no error at the
// end of the stream, and unix.EAGAIN when nothing is waiting.
func peekByte(fd int) (int, error) {
	var b [1]byte
	for {
		n, _, err := unix.Recvfrom(fd, b[:], unix.MSG_PEEK|unix.MSG_DONTWAIT)
		if err != unix.EINTR {
			return n, err
		}
	}
}

// errWouldBlock is peekByte's error when nothing is waiting.
var errWouldBlock error = unix.EAGAIN
