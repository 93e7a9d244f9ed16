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
// (its idle timeout, then its read timeout), and the proxy sets one on
// the node's connection for each response. Each change re-arms a runtime
// timer under a lock, and most changes move the deadline later. So the
// poller keeps the earlier deadline it has, and when that one passes,
// Read or Write find the current deadline still ahead, pass it to the
// poller and wait again. A deadline never fires later than set, and a
// busy connection changes the poller's timer about once per timeout
// period instead of once per request.
type deadline struct {
	mu sync.Mutex
	// want is the deadline last set and have is the poller's, both in
	// Unix nanoseconds. Zero means no deadline.
	want, have int64
}

func unixNano(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

// set records t and passes it to the poller through apply unless the
// poller's deadline comes first.
func (d *deadline) set(t time.Time, apply func(time.Time) error) error {
	w := unixNano(t)
	d.mu.Lock()
	defer d.mu.Unlock()
	d.want = w
	if w != 0 && d.have != 0 && w >= d.have {
		return nil
	}
	d.have = w
	return apply(t)
}

// passed handles a deadline error from the poller. When the deadline last
// set is still ahead, it passes that one to the poller and returns true,
// so that the caller waits again.
func (d *deadline) passed(apply func(time.Time) error) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.want == d.have {
		return false
	}
	var t time.Time
	if d.want != 0 {
		t = time.Unix(0, d.want)
		if !time.Now().Before(t) {
			return false
		}
	}
	d.have = d.want
	return apply(t) == nil
}

// SetReadDeadline sets the deadline of reads, as net.Conn's does.
func (c *Conn) SetReadDeadline(t time.Time) error {
	return c.rdl.set(t, c.TCPConn.SetReadDeadline)
}

// SetWriteDeadline sets the deadline of writes, as net.Conn's does.
func (c *Conn) SetWriteDeadline(t time.Time) error {
	return c.wdl.set(t, c.TCPConn.SetWriteDeadline)
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
