//go:build linux

package rawconn

import (
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// maxRW bounds one read(2) or write(2), as the standard library does,
// because some kernels reject larger counts.
const maxRW = 1 << 30

// Conn is a TCP connection whose Read and Write call read(2) and write(2)
// as raw system calls on the non-blocking socket, and wait in Go's network
// poller when the socket is not ready. Deadlines, Close and every
// other method are those of the wrapped *net.TCPConn, except that a
// deadline moved later reaches the poller only when the earlier one
// passes (see deadline).
//
// NOTE: a raw read or write through SyscallConn waits in the poller
// directly, so it may report a deadline error before the deadline last
// set. The caller sets the deadline again and retries, as the proxy's
// client watch does.
//
// Concurrent Reads, and concurrent Writes, take turns. A Read and a Write
// may run at the same time.
//
// NOTE: the race detector does not see these reads and writes, so it
// draws no happens-before edge between a write and the read of the same
// bytes in one process, as it does for net.Conn. And fasthttp sends a
// response larger than its write buffer with one writev(2) only on a
// *net.TCPConn, so here such a response takes two write(2) calls.
type Conn struct {
	*net.TCPConn
	raw syscall.RawConn

	rmu    sync.Mutex
	rbuf   []byte
	rn     int
	rerr   syscall.Errno
	readFn func(uintptr) bool
	// reads counts the read(2) calls of Read, which the tests check.
	reads int

	wmu  sync.Mutex
	wbuf []byte
	wn   int
	werr syscall.Errno
	// wfull is set when the send buffer had no room for the rest of wbuf.
	wfull bool
	// stall bounds a waiting write by the peer's progress (SetWriteStall),
	// and stalled is set when a write failed for it.
	stall      atomic.Int64
	stalled    atomic.Bool
	writeFn    func(uintptr) bool
	tryWriteFn func(uintptr) bool

	rdl, wdl deadline

	// awaitFn and awaitWritten serve WriteAwaitRead.
	awaitFn      func(uintptr) bool
	awaitWritten bool

	// peekFn and the fields below serve Idle.
	peekFn  func(uintptr)
	peekBuf [1]byte
	idle    bool
}

// Wrap returns c as a *Conn when it is a *net.TCPConn, and c itself
// otherwise.
func Wrap(c net.Conn) net.Conn {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return c
	}
	raw, err := tc.SyscallConn()
	if err != nil {
		return c
	}
	rc := &Conn{TCPConn: tc, raw: raw}
	rc.readFn = rc.readOnce
	rc.writeFn = rc.writeAll
	rc.tryWriteFn = rc.tryWrite
	rc.peekFn = rc.peekIdle
	rc.awaitFn = rc.writeThenAwait
	return rc
}

// Idle reports whether a connection that waited in a pool may carry a
// request: the peer sent nothing in the meantime and did not close it.
// Unrequested bytes would otherwise be read as the response to the next
// request. Idle looks without reading and does not block.
func (c *Conn) Idle() bool {
	c.rmu.Lock()
	defer c.rmu.Unlock()
	c.idle = false
	if err := c.raw.Control(c.peekFn); err != nil {
		return false
	}
	return c.idle
}

// peekIdle sets c.idle when the socket has nothing to read: no byte and
// no end of stream.
func (c *Conn) peekIdle(fd uintptr) {
	for {
		_, err := Recv(int(fd), c.peekBuf[:], unix.MSG_PEEK|unix.MSG_DONTWAIT)
		if err != syscall.EINTR {
			c.idle = err == syscall.EAGAIN
			return
		}
	}
}

// Unwrap returns the wrapped connection.
func (c *Conn) Unwrap() *net.TCPConn { return c.TCPConn }

// readOnce makes one read(2) into c.rbuf. It returns false when the
// socket has nothing to read, so that the poller waits for it.
func (c *Conn) readOnce(fd uintptr) bool {
	for {
		c.reads++
		n, err := Read(int(fd), c.rbuf)
		switch err {
		case nil:
			c.rn, c.rerr = n, 0
			return true
		case syscall.EINTR:
			continue
		case syscall.EAGAIN:
			return false
		default:
			c.rn, c.rerr = 0, err.(syscall.Errno)
			return true
		}
	}
}

// writeAll writes c.wbuf[c.wn:] until it is all written, the socket's
// send buffer is full (false: wait until it has room) or write(2) fails.
func (c *Conn) writeAll(fd uintptr) bool {
	for c.wn < len(c.wbuf) {
		n, err := Write(int(fd), c.wbuf[c.wn:])
		switch err {
		case nil:
			c.wn += n
		case syscall.EINTR:
		case syscall.EAGAIN:
			return false
		default:
			c.werr = err.(syscall.Errno)
			return true
		}
	}
	return true
}

// tryWrite writes c.wbuf[c.wn:] as writeAll does, but does not wait:
// when the send buffer is full it sets c.wfull and returns.
func (c *Conn) tryWrite(fd uintptr) bool {
	if !c.writeAll(fd) {
		c.wfull = true
	}
	return true
}

// Read reads up to len(b) bytes. It returns io.EOF when the peer has
// closed its side.
func (c *Conn) Read(b []byte) (int, error) {
	if len(b) == 0 {
		return 0, nil
	}
	if len(b) > maxRW {
		b = b[:maxRW]
	}
	c.rmu.Lock()
	c.rbuf = b
	err := c.raw.Read(c.readFn)
	for err != nil && isDeadline(err) && c.rdl.passed(c.TCPConn.SetReadDeadline) {
		err = c.raw.Read(c.readFn)
	}
	n, e := c.rn, c.rerr
	c.rbuf = nil
	c.rmu.Unlock()
	switch {
	case err != nil:
		return 0, c.opError("read", err)
	case e != 0:
		return 0, c.opError("read", os.NewSyscallError("read", e))
	case n == 0:
		return 0, io.EOF
	}
	return n, nil
}

// Write writes all of b unless a deadline passes or write(2) fails.
func (c *Conn) Write(b []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if len(b) == 0 && c.wdl.expired() {
		return 0, c.opError("write", os.ErrDeadlineExceeded)
	}
	written := 0
	for written < len(b) {
		chunk := b[written:]
		if len(chunk) > maxRW {
			chunk = chunk[:maxRW]
		}
		c.wbuf, c.wn, c.werr = chunk, 0, 0
		err := c.writeChunk()
		written += c.wn
		e := c.werr
		c.wbuf = nil
		switch {
		case err != nil:
			return written, c.opError("write", err)
		case e != 0:
			return written, c.opError("write", os.NewSyscallError("write", e))
		}
	}
	return written, nil
}

// writeChunk writes c.wbuf. It tries first without waiting, so that a
// write that the send buffer takes whole leaves the poller's deadline
// alone, and passes the write deadline to the poller before it waits.
func (c *Conn) writeChunk() error {
	if c.wdl.expired() {
		// The poller may not have the deadline, so it would not fail.
		return os.ErrDeadlineExceeded
	}
	c.wfull = false
	err := c.raw.Write(c.tryWriteFn)
	waiting := false
	stall := time.Duration(c.stall.Load())
	// acked grows by the bytes that the peer acknowledged: the bytes
	// written less those still queued.
	acked := 0
	for {
		switch {
		case err != nil && isDeadline(err) && waiting && stall > 0:
			// The stall bound or the deadline passed. Go on while the
			// peer acknowledged bytes since the last check.
			q := c.queued()
			if c.wdl.expired() || q < 0 || c.wn-q <= acked {
				c.stalled.Store(!c.wdl.expired())
				c.wdl.done()
				return err
			}
			acked = c.wn - q
			if werr := c.wdl.waitUntil(time.Now().Add(stall), c.TCPConn.SetWriteDeadline); werr != nil {
				c.wdl.done()
				return werr
			}
		case err != nil && isDeadline(err) && c.wdl.passed(c.TCPConn.SetWriteDeadline):
			// A deadline the poller kept from before has passed.
		case err == nil && c.wfull && !waiting:
			c.wfull = false
			waiting = true
			var werr error
			if stall > 0 {
				acked = c.wn - c.queued()
				werr = c.wdl.waitUntil(time.Now().Add(stall), c.TCPConn.SetWriteDeadline)
			} else {
				werr = c.wdl.wait(c.TCPConn.SetWriteDeadline)
			}
			if werr != nil {
				c.wdl.done()
				return werr
			}
		default:
			if waiting {
				c.wdl.done()
			}
			return err
		}
		fn := c.tryWriteFn
		if waiting {
			fn = c.writeFn
		}
		err = c.raw.Write(fn)
	}
}

// WriteAwaitRead writes b, as Write does, to a peer that responds to it,
// and returns once the response can be read, the peer closed the
// connection, or the read deadline passed. It saves a read(2) call: Go's
// poller drops a readiness it saw before a read starts, so a plain Read
// tries read(2) first and waits only after that finds nothing. Here the
// wait starts before the write, so a response that comes at once is not
// missed, and the Read that follows finds it.
//
// When the send buffer cannot take b whole, or the wait ends early, the
// rest goes through Write and the response through a plain Read. Bytes
// that arrived before the call do not end the wait. Errors are those of
// the write. Reads must not run at the same time.
func (c *Conn) WriteAwaitRead(b []byte) (int, error) {
	if len(b) == 0 || len(b) > maxRW {
		return c.Write(b)
	}
	c.rmu.Lock()
	c.wmu.Lock()
	n := 0
	var e syscall.Errno
	if !c.wdl.expired() {
		c.wbuf, c.wn, c.werr, c.awaitWritten = b, 0, 0, false
		// A deadline or a closed connection ends the wait as it would end
		// the Read that follows, which reports it.
		_ = c.raw.Read(c.awaitFn)
		n, e = c.wn, c.werr
		c.wbuf = nil
	}
	c.wmu.Unlock()
	c.rmu.Unlock()
	if e != 0 {
		return n, c.opError("write", os.NewSyscallError("write", e))
	}
	if n < len(b) {
		m, err := c.Write(b[n:])
		return n + m, err
	}
	return n, nil
}

// writeThenAwait is WriteAwaitRead's step in the poller's read loop. The
// first call writes, and returns false, which makes the poller wait for
// data, only when the write was whole.
func (c *Conn) writeThenAwait(fd uintptr) bool {
	if c.awaitWritten {
		return true
	}
	c.awaitWritten = true
	return !c.writeAll(fd) || c.werr != 0
}

// queued returns the bytes of the send queue that the peer has not
// acknowledged, or -1 when they are not known.
func (c *Conn) queued() int {
	q := -1
	_ = c.raw.Control(func(fd uintptr) { q = QueuedBytes(int(fd)) })
	return q
}

// SetWriteStall bounds a write that waits for room in the send buffer by
// the peer's progress instead of by the time the write takes: it fails
// once the peer has acknowledged no bytes for d. Linux reports room only
// once a third of the buffer is free, which a slow but steady reader can
// take longer than d to free. A write deadline still applies. Zero turns
// the bound off.
func (c *Conn) SetWriteStall(d time.Duration) {
	c.stall.Store(int64(d))
	c.stalled.Store(false)
}

// WriteStalled reports whether a write failed because of SetWriteStall's
// bound.
func (c *Conn) WriteStalled() bool { return c.stalled.Load() }

// opError gives an error of the raw connection the shape net.Conn's
// errors have, so that checks for timeouts, closed connections and resets
// see the same values.
func (c *Conn) opError(op string, err error) error {
	var oe *net.OpError
	if errors.As(err, &oe) {
		err = oe.Err
	}
	return &net.OpError{Op: op, Net: "tcp", Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: err}
}
