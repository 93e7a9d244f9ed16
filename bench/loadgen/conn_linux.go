//go:build linux

package loadgen

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/llmproxy/llmproxy/internal/rawconn"
	"github.com/llmproxy/llmproxy/internal/streamloop"
)

// connState is the step of the current stream that a worker's
// connection is at.
type connState uint8

const (
	// connWaiting has no stream: the next starts at wakeAt.
	connWaiting connState = iota
	// connConnecting waits for the TCP handshake until wakeAt.
	connConnecting
	// connWriting waits for room in the socket for the rest of the
	// request.
	connWriting
	// connHead reads the response head.
	connHead
	// connBody reads the response body.
	connBody
)

// streamConn is a worker's connection and the transport state of its
// current stream.
type streamConn struct {
	w     *streamWorker
	index int32 // in streamLoop.conns, and the epoll data of fd
	fd    int   // -1 when closed
	state connState
	// wakeAt is when a waiting connection starts its next stream, or when
	// a connecting one gives up.
	wakeAt time.Time
	// sent counts the bytes of the request written.
	sent int
	// reused is set when the connection carried an earlier response.
	reused bool
	// received is set once a byte of the response arrived.
	received bool
	// head holds the start of a response head whose end has not arrived
	// yet, and resp is the parsed head.
	head   []byte
	resp   responseHead
	dec    streamloop.Decoder
	errMsg []byte // the start of the body of a response whose status is not 200
}

// startStream starts the worker's next stream, on its open connection
// when it has one.
func (l *streamLoop) startStream(c *streamConn) {
	c.w.beginStream(l.now)
	l.send(c)
}

// send writes the request of the current stream, connecting first when c
// has no connection.
func (l *streamLoop) send(c *streamConn) {
	c.received = false
	c.head = c.head[:0]
	c.errMsg = c.errMsg[:0]
	c.sent = 0
	if c.fd >= 0 {
		c.reused = true
		c.state = connWriting
		l.writeRequest(c)
		return
	}
	l.connect(c)
}

// connect opens a non-blocking TCP connection to the worker's target and
// adds it to the epoll set.
func (l *streamLoop) connect(c *streamConn) {
	// A new connection is not retried, so lost must not send again.
	c.reused = false
	addr := c.w.target.addr
	sa, family := sockaddr(addr)
	fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, unix.IPPROTO_TCP)
	if err != nil {
		l.lost(c, fmt.Errorf("open socket: %w", err))
		return
	}
	_ = unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
	// The kernel returns Fd and Pad as they were given.
	ev := unix.EpollEvent{Events: socketEvents, Fd: int32(fd), Pad: c.index}
	if err := unix.EpollCtl(l.set.Fd, unix.EPOLL_CTL_ADD, fd, &ev); err != nil {
		_ = unix.Close(fd)
		l.lost(c, fmt.Errorf("add socket to epoll: %w", err))
		return
	}
	c.fd = fd
	switch err := unix.Connect(fd, sa); err {
	case nil:
		c.state = connWriting
		l.writeRequest(c)
	case unix.EINPROGRESS, unix.EINTR:
		c.state = connConnecting
		c.wakeAt = l.now.Add(connectTimeout)
		l.schedule(c.wakeAt)
	default:
		l.lost(c, fmt.Errorf("connect to %s: %w", addr, err))
	}
}

// connected handles an event on a connecting socket.
func (l *streamLoop) connected(c *streamConn, events uint32) {
	soErr, err := unix.GetsockoptInt(c.fd, unix.SOL_SOCKET, unix.SO_ERROR)
	if err == nil && soErr != 0 {
		err = syscall.Errno(soErr)
	}
	if err != nil {
		l.lost(c, fmt.Errorf("connect to %s: %w", c.w.target.addr, err))
		return
	}
	if events&unix.EPOLLOUT == 0 {
		return
	}
	c.state = connWriting
	l.writeRequest(c)
	if c.state == connHead {
		l.readable(c, events)
	}
}

// writeRequest writes what is left of the request. The state moves to
// connHead once all of it is written. Otherwise the socket's EPOLLOUT
// edge calls it again.
func (l *streamLoop) writeRequest(c *streamConn) {
	request := c.w.target.request
	for c.sent < len(request) {
		n, err := rawconn.Write(c.fd, request[c.sent:])
		switch {
		case err == unix.EINTR:
			continue
		case err == unix.EAGAIN:
			return
		case err != nil:
			l.lost(c, fmt.Errorf("write request: %w", err))
			return
		}
		c.sent += n
	}
	c.state = connHead
}

// readable reads the socket until it is drained, and parses what it
// read. Each read takes one receive time for all chunks in it. A read
// that returns less than requested has drained the data. When events
// report the end of the connection or an error, though, the loop reads on
// until read(2) returns it, because no later edge will report it again.
func (l *streamLoop) readable(c *streamConn, events uint32) {
	ended := events&(unix.EPOLLRDHUP|unix.EPOLLHUP|unix.EPOLLERR) != 0
	for c.state == connHead || c.state == connBody {
		fd := c.fd
		carried := c.head
		if c.state == connBody {
			carried = c.w.partial
		}
		k := copy(l.buf, carried)
		n, err := rawconn.Read(fd, l.buf[k:])
		if err == unix.EINTR {
			continue
		}
		if err == unix.EAGAIN {
			return
		}
		l.now = time.Now()
		switch {
		case err != nil:
			l.lost(c, fmt.Errorf("read response: %w", err))
			return
		case n == 0:
			l.serverClosed(c)
			return
		}
		c.received = true
		if c.state == connHead {
			l.parseHead(c, l.buf[:k+n])
		} else {
			l.body(c, l.buf[:k], l.buf[k:k+n])
		}
		if (n < len(l.buf)-k && !ended) || c.fd != fd {
			return
		}
	}
}

// parseHead parses the response head at the start of data, and the body
// bytes after it. It skips informational (1xx) responses.
func (l *streamLoop) parseHead(c *streamConn, data []byte) {
	for {
		n := headLength(data)
		if n < 0 {
			if len(data) > maxHeadBytes {
				l.lost(c, fmt.Errorf("%w: head longer than %d bytes", errBadHead, maxHeadBytes))
				return
			}
			c.head = append(c.head[:0], data...)
			return
		}
		resp, err := parseHead(data[:n])
		switch {
		case err != nil:
			l.lost(c, err)
			return
		case resp.status == 101:
			l.lost(c, &StatusError{Status: resp.status})
			return
		case resp.status < 200:
			data = data[n:]
			continue
		}
		c.head = c.head[:0]
		c.resp = resp
		c.dec = streamloop.NewDecoder(resp.framing, resp.length)
		c.state = connBody
		// The decoder writes the payload over the bytes it has read.
		l.body(c, data[:0], data[n:])
		return
	}
}

// body decodes in and appends its payload to out, which holds the
// stream's partial line, then records the chunks of the complete lines.
func (l *streamLoop) body(c *streamConn, out, in []byte) {
	payload, extra, decodeErr := c.dec.Decode(in, out)
	if c.resp.status != 200 {
		l.errorBody(c, payload, decodeErr)
		return
	}
	if err := c.w.feed(payload, l.now); err != nil {
		l.lost(c, err)
		return
	}
	switch {
	case decodeErr != nil:
		l.lost(c, fmt.Errorf("read response: %w", decodeErr))
	case c.dec.Done():
		l.finish(c, c.w.bodyEnded(), extra == 0 && c.resp.keepAlive)
	}
}

// errorBody keeps the start of the body of a response whose status is
// not 200, and fails the stream once it has enough of it.
func (l *streamLoop) errorBody(c *streamConn, payload []byte, decodeErr error) {
	room := errorBodyBytes - len(c.errMsg)
	c.errMsg = append(c.errMsg, payload[:min(len(payload), room)]...)
	if len(c.errMsg) >= errorBodyBytes || c.dec.Done() || decodeErr != nil {
		l.lost(c, c.statusError())
	}
}

func (c *streamConn) statusError() *StatusError {
	return &StatusError{Status: c.resp.status, Body: string(bytes.TrimSpace(c.errMsg))}
}

// serverClosed handles the end of the connection: the end of a body that
// runs until the server closes, or a failure.
func (l *streamLoop) serverClosed(c *streamConn) {
	if c.state == connBody && c.resp.framing == streamloop.UntilClose {
		if c.resp.status != 200 {
			l.lost(c, c.statusError())
			return
		}
		l.finish(c, c.w.bodyEnded(), false)
		return
	}
	l.lost(c, errors.New("server closed the connection before the end of the response"))
}

// lost ends the stream with err and closes the connection. A reused
// connection that fails before any byte of the response arrived sends
// the request again on a new connection, as net/http's client does,
// because a server may close an idle connection at any time.
func (l *streamLoop) lost(c *streamConn, err error) {
	if c.reused && !c.received {
		l.closeConn(c)
		l.send(c)
		return
	}
	l.finish(c, err, false)
}

// finish ends the current stream and starts the next: at once when it
// succeeded, on the same connection when reusable is set, and after
// errorPause when it failed.
func (l *streamLoop) finish(c *streamConn, err error, reusable bool) {
	live := l.live()
	c.w.endStream(err, live)
	if err != nil || !reusable {
		l.closeConn(c)
	}
	c.state = connWaiting
	if !live {
		return
	}
	if err != nil {
		c.wakeAt = l.now.Add(errorPause)
		l.schedule(c.wakeAt)
		return
	}
	l.startStream(c)
}

// closeConn closes c's socket, which also takes it out of the epoll set.
func (l *streamLoop) closeConn(c *streamConn) {
	if c.fd < 0 {
		return
	}
	_ = unix.Close(c.fd)
	c.fd = -1
}

// sockaddr converts addr for connect(2) and returns its address family.
func sockaddr(addr *net.TCPAddr) (unix.Sockaddr, int) {
	ap := addr.AddrPort()
	if ap.Addr().Unmap().Is4() {
		return &unix.SockaddrInet4{Port: int(ap.Port()), Addr: ap.Addr().Unmap().As4()}, unix.AF_INET
	}
	return &unix.SockaddrInet6{Port: int(ap.Port()), Addr: ap.Addr().As16()}, unix.AF_INET6
}
