//go:build linux

package rawconn

import (
	"fmt"
	"os"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// EpollSet is an epoll descriptor with an eventfd in its set, joined to
// Go's poller so that a goroutine can wait for the set's events without
// blocking a thread in epoll_wait.
type EpollSet struct {
	Fd      int // the epoll descriptor
	EventFd int // the eventfd that Wake writes
	// File and Raw wrap Fd. A read deadline on File ends a wait in Raw.
	File *os.File
	Raw  syscall.RawConn
}

// NewEpollSet creates an epoll set named name for Go's poller, with its
// eventfd registered for reading.
func NewEpollSet(name string) (*EpollSet, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("epoll_create1: %w", err)
	}
	efd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		_ = unix.Close(epfd)
		return nil, fmt.Errorf("eventfd: %w", err)
	}
	e := &EpollSet{Fd: epfd, EventFd: efd}
	ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(efd)}
	if err := EpollCtl(epfd, unix.EPOLL_CTL_ADD, efd, &ev); err != nil {
		e.Close()
		return nil, fmt.Errorf("epoll_ctl on eventfd %d: %w", efd, err)
	}
	// A non-blocking epoll descriptor joins Go's poller, which then wakes
	// the waiting goroutine when the set has events.
	if err := unix.SetNonblock(epfd, true); err != nil {
		e.Close()
		return nil, fmt.Errorf("set epoll descriptor non-blocking: %w", err)
	}
	e.File = os.NewFile(uintptr(epfd), name)
	// Only a descriptor in Go's poller takes deadlines.
	if err := e.File.SetReadDeadline(time.Time{}); err != nil {
		e.Close()
		return nil, fmt.Errorf("epoll descriptor not accepted by Go's poller: %w", err)
	}
	if e.Raw, err = e.File.SyscallConn(); err != nil {
		e.Close()
		return nil, err
	}
	return e, nil
}

// Wake adds one to the eventfd, so that the set reports an event.
func (e *EpollSet) Wake() {
	increment := [8]byte{1}
	for {
		if _, err := Write(e.EventFd, increment[:]); err != unix.EINTR {
			return
		}
	}
}

// Drain reads the eventfd's count, so that it reports no event until the
// next Wake.
func (e *EpollSet) Drain() {
	var count [8]byte
	_, _ = Read(e.EventFd, count[:])
}

// Close closes the epoll descriptor and the eventfd.
func (e *EpollSet) Close() {
	_ = unix.Close(e.EventFd)
	if e.File != nil {
		_ = e.File.Close()
		return
	}
	_ = unix.Close(e.Fd)
}
