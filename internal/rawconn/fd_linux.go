//go:build linux

package rawconn

import (
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Read makes one read(2) on the non-blocking descriptor fd as a raw
// system call. Its error, if any, is a syscall.Errno.
func Read(fd int, p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	n, _, e := syscall.RawSyscall(syscall.SYS_READ, uintptr(fd),
		uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)))
	if e != 0 {
		return 0, e
	}
	return int(n), nil
}

// Write makes one write(2) on the non-blocking descriptor fd as a raw
// system call. Its error, if any, is a syscall.Errno.
func Write(fd int, p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	n, _, e := syscall.RawSyscall(syscall.SYS_WRITE, uintptr(fd),
		uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)))
	if e != 0 {
		return 0, e
	}
	return int(n), nil
}

// Recv makes one recvfrom(2) with flags on the non-blocking socket fd as
// a raw system call. Its error, if any, is a syscall.Errno.
func Recv(fd int, p []byte, flags int) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	n, _, e := syscall.RawSyscall6(syscall.SYS_RECVFROM, uintptr(fd),
		uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)), uintptr(flags), 0, 0)
	if e != 0 {
		return 0, e
	}
	return int(n), nil
}

// QueuedBytes returns the bytes in the send queue of socket fd that the
// peer has not acknowledged, or -1 when the kernel does not report them.
func QueuedBytes(fd int) int {
	var q int32
	_, _, e := syscall.RawSyscall(syscall.SYS_IOCTL, uintptr(fd), unix.SIOCOUTQ, uintptr(unsafe.Pointer(&q)))
	if e != 0 {
		return -1
	}
	return int(q)
}

// EpollWait collects the ready events of the epoll set epfd without
// waiting. It is a raw system call, because an event loop makes one for
// every batch of events, and a regular one wakes the runtime's monitor
// thread whenever the process was idle.
func EpollWait(epfd int, events []unix.EpollEvent) (int, error) {
	n, _, e := unix.RawSyscall6(unix.SYS_EPOLL_PWAIT, uintptr(epfd),
		uintptr(unsafe.Pointer(&events[0])), uintptr(len(events)), 0, 0, 0)
	if e != 0 {
		return 0, e
	}
	return int(n), nil
}

// EpollCtl changes the epoll set epfd as a raw system call, for the
// reason given at EpollWait. ev may be nil for EPOLL_CTL_DEL.
func EpollCtl(epfd, op, fd int, ev *unix.EpollEvent) error {
	_, _, e := unix.RawSyscall6(unix.SYS_EPOLL_CTL, uintptr(epfd), uintptr(op),
		uintptr(fd), uintptr(unsafe.Pointer(ev)), 0, 0)
	if e != 0 {
		return e
	}
	return nil
}
