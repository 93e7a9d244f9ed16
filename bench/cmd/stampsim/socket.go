package main

import (
	"errors"
	"fmt"
	"io"
	"net"
	"syscall"
	"unsafe"
)

// errStalled means that a socket could not take a whole chunk at once: the
// client has stopped reading and its buffers are full.
var errStalled = errors.New("socket buffer full: the client is not reading")

// rawSocket reads and writes a socket with raw system calls, which skip the
// Go scheduler's bookkeeping for a call that may block. That is sound
// because Go's sockets are non-blocking. It matters because the pacer
// writes thousands of chunks a second, and that bookkeeping wakes Go's
// system monitor thread when it sleeps. The monitor then polls every 20 µs
// for a while (entersyscall and sysmon in the runtime's proc.go, Go 1.26).
// A rawSocket is not safe for concurrent reads, nor for concurrent writes.
type rawSocket struct {
	raw syscall.RawConn
	// fd is the socket's file descriptor, which Write uses without the
	// connection's reference count. The owner of the connection must not
	// close it while a Write may run, or a Write could reach a new file
	// that reuses the number.
	fd uintptr
	// read is the method value of readOnce, made once, so that a Read
	// allocates no closure.
	read func(fd uintptr) bool

	// The arguments and results of readOnce.
	rp      []byte
	rn      int
	rerr    error
	readEOF bool
}

func (s *rawSocket) init(nc net.Conn) error {
	sc, ok := nc.(syscall.Conn)
	if !ok {
		return fmt.Errorf("connection %T has no file descriptor", nc)
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return fmt.Errorf("get the connection's file descriptor: %w", err)
	}
	if err := raw.Control(func(fd uintptr) { s.fd = fd }); err != nil {
		return fmt.Errorf("get the connection's file descriptor: %w", err)
	}
	s.raw = raw
	s.read = s.readOnce
	return nil
}

// Read reads into p, waiting in Go's network poller until data arrives.
// It returns io.EOF when the client has closed its side, and the
// deadline's error after SetReadDeadline on the connection.
func (s *rawSocket) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	s.rp = p
	err := s.raw.Read(s.read)
	s.rp = nil
	switch {
	case err != nil:
		return 0, err
	case s.rerr != nil:
		return 0, s.rerr
	case s.readEOF:
		return 0, io.EOF
	}
	return s.rn, nil
}

// readOnce reads once from fd. Returning false makes RawConn.Read wait
// until fd is readable and call it again.
func (s *rawSocket) readOnce(fd uintptr) bool {
	n, errno := rawSyscall(syscall.SYS_READ, fd, s.rp)
	s.rn, s.rerr, s.readEOF = n, nil, false
	switch {
	case errno == syscall.EAGAIN:
		return false
	case errno != 0:
		s.rn, s.rerr = 0, errno
	case n == 0:
		s.readEOF = true
	}
	return true
}

// Write writes all of p with one system call that never waits, or fails.
// It returns errStalled when the socket takes only part of p, or none of
// it, and the system call's error when the client has gone. After an
// error the caller must close the connection, because a chunk may be cut.
func (s *rawSocket) Write(p []byte) error {
	if len(p) == 0 {
		return nil
	}
	n, errno := rawSyscall(syscall.SYS_WRITE, s.fd, p)
	switch {
	case errno == syscall.EAGAIN:
		return errStalled
	case errno != 0:
		return errno
	case n < len(p):
		return errStalled
	}
	return nil
}

// rawSyscall makes the read or write system call trap on fd with the
// non-empty buffer p, retrying when a signal interrupts it.
func rawSyscall(trap, fd uintptr, p []byte) (int, syscall.Errno) {
	for {
		n, _, errno := syscall.RawSyscall(trap, fd, uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)))
		if errno != syscall.EINTR {
			return int(n), errno
		}
	}
}
