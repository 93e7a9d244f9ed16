//go:build linux

package rawconn

import (
	"errors"
	"io"
	"os"
	"sync"
	"time"
)

// deadline is the deadline of one direction, passed to the poller lazily.
//
// fasthttp's server sets a connection's read deadline twice per request
// (its idle timeout, then its read timeout) and, for a response under a
// write timeout, sets and clears a write deadline. The proxy sets a read
// deadline on the node's connection for each response. Each change that
// reaches the poller re-arms a runtime timer under a lock.
//
// A read deadline moved later stays out of the poller, which keeps the
// earlier one it has. When that one passes, Read finds the deadline last
// set still ahead, passes it to the poller and waits again. A write
// deadline reaches the poller only when a write has to wait for room in
// the send buffer, and Write checks it before it starts. So a deadline
// never fires later than set, and a busy connection changes the poller's
// timers about once per timeout period instead of a few times per
// request.
type deadline struct {
	mu sync.Mutex
	// want is the deadline last set and have is the poller's. Both keep
	// the monotonic clock reading of the time passed in, so that a step of
	// the wall clock does not move them. Zero means no deadline.
	want, have time.Time
	// waiting is set while a write waits in the poller, and stall while
	// the poller has a stall bound (waitUntil) instead of want.
	waiting, stall bool
}

// set records a read deadline and passes it to the poller unless the
// poller's deadline comes first.
func (d *deadline) set(t time.Time, apply func(time.Time) error) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.want = t
	return d.applyLocked(apply)
}

// applyLocked passes the deadline last set to the poller unless the
// poller's deadline comes first.
func (d *deadline) applyLocked(apply func(time.Time) error) error {
	if d.stall && (d.want.IsZero() || !d.want.Before(d.have)) {
		return nil // the stall bound comes first
	}
	if !d.want.IsZero() && !d.have.IsZero() && !d.want.Before(d.have) {
		return nil
	}
	d.have = d.want
	return apply(d.want)
}

// setWrite records a write deadline. It reaches the poller now only while
// a write waits. A write that starts after it passed fails in writeChunk.
func (d *deadline) setWrite(t time.Time, apply func(time.Time) error) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.want = t
	if d.waiting {
		return d.applyLocked(apply)
	}
	return nil
}

// wait passes the write deadline last set to the poller before a write
// waits there, and marks the wait until done.
func (d *deadline) wait(apply func(time.Time) error) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.waiting = true
	if d.want.Equal(d.have) {
		return nil
	}
	d.have = d.want
	return apply(d.want)
}

// waitUntil marks a wait as wait does, but passes t, a stall bound, to
// the poller, or the deadline last set when that comes first.
func (d *deadline) waitUntil(t time.Time, apply func(time.Time) error) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.waiting, d.stall = true, true
	if !d.want.IsZero() && d.want.Before(t) {
		t = d.want
	}
	d.have = t
	return apply(t)
}

// expired reports whether the deadline last set has passed.
func (d *deadline) expired() bool {
	d.mu.Lock()
	w := d.want
	d.mu.Unlock()
	return !w.IsZero() && time.Until(w) <= 0
}

// done ends the wait that wait marked.
func (d *deadline) done() {
	d.mu.Lock()
	d.waiting, d.stall = false, false
	d.mu.Unlock()
}

// passed handles a deadline error from the poller. When the deadline last
// set is still ahead, it passes that one to the poller and returns true,
// so that the caller waits again.
func (d *deadline) passed(apply func(time.Time) error) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.want.Equal(d.have) {
		return false
	}
	if !d.want.IsZero() && time.Until(d.want) <= 0 {
		return false
	}
	d.have = d.want
	return apply(d.want) == nil
}

// SetReadDeadline sets the deadline of reads, as net.Conn's does.
func (c *Conn) SetReadDeadline(t time.Time) error {
	return c.rdl.set(t, c.TCPConn.SetReadDeadline)
}

// SetWriteDeadline sets the deadline of writes, as net.Conn's does.
func (c *Conn) SetWriteDeadline(t time.Time) error {
	return c.wdl.setWrite(t, c.TCPConn.SetWriteDeadline)
}

// SetDeadline sets the deadlines of reads and writes, as net.Conn's does.
func (c *Conn) SetDeadline(t time.Time) error {
	rerr := c.SetReadDeadline(t)
	werr := c.SetWriteDeadline(t)
	if rerr != nil {
		return rerr
	}
	return werr
}

func isDeadline(err error) bool { return errors.Is(err, os.ErrDeadlineExceeded) }

// ReadFrom copies r to the connection through Write, so that the copy
// takes the raw writes and the lazy deadline as well.
func (c *Conn) ReadFrom(r io.Reader) (int64, error) {
	return io.Copy(writerOnly{c}, r)
}

// WriteTo copies the connection to w through Read.
func (c *Conn) WriteTo(w io.Writer) (int64, error) {
	return io.Copy(w, readerOnly{c})
}

type writerOnly struct{ io.Writer }

type readerOnly struct{ io.Reader }
