//go:build linux

package streamloop

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http/httputil"
	"strings"
	"sync"
	"testing"
	"time"
)

// tcpPair returns both ends of a loopback TCP connection.
func tcpPair(t testing.TB) (*net.TCPConn, *net.TCPConn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		accepted <- c
	}()
	dialed, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	other := <-accepted
	if other == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() {
		dialed.Close()
		other.Close()
	})
	return dialed.(*net.TCPConn), other.(*net.TCPConn)
}

// rig is a stream between a fake node and a fake client: the test writes
// as the node on node and reads as the client on client, and the loop
// relays from src to dst.
type rig struct {
	node, src    *net.TCPConn
	dst, client  *net.TCPConn
	mu           sync.Mutex
	observed     bytes.Buffer
	handle       *Handle
	clientReader *bufio.Reader
}

func newRig(t testing.TB) *rig {
	r := &rig{}
	r.node, r.src = tcpPair(t)
	r.dst, r.client = tcpPair(t)
	r.clientReader = bufio.NewReader(r.client)
	return r
}

// start hands the rig's sockets to a loop. Unless s has its own Data,
// the payload the loop sees is kept in r.observed.
func (r *rig) start(t *testing.T, s Stream) {
	t.Helper()
	var err error
	if s.Src, err = Fd(r.src); err != nil {
		t.Fatal(err)
	}
	if s.Dst, err = Fd(r.dst); err != nil {
		t.Fatal(err)
	}
	if s.Data == nil {
		s.Data = func(b []byte) {
			r.mu.Lock()
			r.observed.Write(b)
			r.mu.Unlock()
		}
	}
	if r.handle, err = Start(s); err != nil {
		t.Fatal(err)
	}
}

// streamLimit bounds the wait for a stream to end. It is generous because
// the slow-reader test takes several seconds under the race detector on a
// busy machine, and only a hang should exceed it.
const streamLimit = 60 * time.Second

// wait returns the result, failing the test if the stream does not end
// within streamLimit.
func (r *rig) wait(t *testing.T) Result {
	t.Helper()
	got := make(chan Result, 1)
	go func() { got <- r.handle.Wait() }()
	select {
	case res := <-got:
		return res
	case <-time.After(streamLimit):
		t.Fatalf("stream did not end within %v", streamLimit)
	}
	return Result{}
}

// readBody ends the chunked body the loop wrote, as the caller of the loop
// does, and returns its payload as the client decodes it.
func (r *rig) readBody(t *testing.T) []byte {
	t.Helper()
	if _, err := r.dst.Write([]byte("0\r\n\r\n")); err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(httputil.NewChunkedReader(r.clientReader))
	if err != nil {
		t.Fatalf("client could not read the chunked body: %v", err)
	}
	return body
}

func (r *rig) writeNode(t *testing.T, s string) {
	t.Helper()
	if _, err := r.node.Write([]byte(s)); err != nil {
		t.Fatal(err)
	}
}

func TestLoopRelaysChunksAsTheyArrive(t *testing.T) {
	r := newRig(t)
	r.start(t, Stream{Framing: Chunked, Buffered: []byte("6\r\nfirst\n\r\n"), Idle: 5 * time.Second})
	chunk, err := readChunk(r.clientReader)
	if err != nil {
		t.Fatal(err)
	}
	if chunk != "first\n" {
		t.Fatalf("client read chunk %q first, want the buffered line", chunk)
	}

	for i := range 3 {
		line := fmt.Sprintf("line %d\n", i)
		r.writeNode(t, fmt.Sprintf("%x\r\n%s\r\n", len(line), line))
		// Each line reaches the client before the node sends the next.
		chunk, err := readChunk(r.clientReader)
		if err != nil {
			t.Fatal(err)
		}
		if chunk != line {
			t.Fatalf("client read chunk %q, want %q", chunk, line)
		}
	}

	r.writeNode(t, "0\r\n\r\n")

	res := r.wait(t)
	if res.Err != nil {
		t.Fatalf("stream ended with %v", res.Err)
	}
	if !res.Reusable {
		t.Error("clean chunked body left the node connection unusable")
	}
	if body := r.readBody(t); len(body) != 0 {
		t.Errorf("client read %q after the last line", body)
	}
	if got := r.observed.String(); got != "first\nline 0\nline 1\nline 2\n" {
		t.Errorf("Data saw %q", got)
	}
}

// readChunk reads one HTTP chunk and returns its data.
func readChunk(br *bufio.Reader) (string, error) {
	var size int
	if _, err := fmt.Fscanf(br, "%x\r\n", &size); err != nil {
		return "", fmt.Errorf("read chunk size: %w", err)
	}
	data := make([]byte, size+2)
	if _, err := io.ReadFull(br, data); err != nil {
		return "", err
	}
	if string(data[size:]) != "\r\n" {
		return "", fmt.Errorf("chunk data ends with %q", data[size:])
	}
	return string(data[:size]), nil
}

func TestLoopFramings(t *testing.T) {
	cases := []struct {
		name     string
		framing  Framing
		length   int64
		node     string
		closeOut bool
		payload  string
		reusable bool
	}{
		{"chunked", Chunked, 0, "4\r\nabcd\r\n3\r\nefg\r\n0\r\n\r\n", false, "abcdefg", true},
		{"chunked with bytes after", Chunked, 0, "2\r\nab\r\n0\r\n\r\nJUNK", false, "ab", false},
		{"length", Length, 7, "abcdefg", false, "abcdefg", true},
		{"until close", UntilClose, 0, "abcdefg", true, "abcdefg", false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := newRig(t)
			r.start(t, Stream{Framing: c.framing, Length: c.length})
			r.writeNode(t, c.node)
			if c.closeOut {
				_ = r.node.CloseWrite()
			}
			res := r.wait(t)
			if res.Err != nil {
				t.Fatalf("stream ended with %v", res.Err)
			}
			if res.Reusable != c.reusable {
				t.Errorf("reusable %v, want %v", res.Reusable, c.reusable)
			}
			if body := string(r.readBody(t)); body != c.payload {
				t.Errorf("client read %q, want %q", body, c.payload)
			}
		})
	}
}

// frame returns payload as one HTTP chunk.
func frame(payload string) string { return fmt.Sprintf("%x\r\n%s\r\n", len(payload), payload) }

func TestLoopHoldsPartUnit(t *testing.T) {
	cases := []struct {
		name  string
		unit  Unit
		parts []string // each sent as one chunk, and then the node closes
		reads []string // the chunks that the client reads, one per part
		held  string   // the bytes still held when the node closes
	}{
		{"lines", Lines, []string{"one\ntw", "o\nthr"}, []string{"one\n", "two\n"}, "thr"},
		{"events", Events, []string{"data: a\n\ndata: b\n", "\nevent: c\n"},
			[]string{"data: a\n\n", "data: b\n\n"}, "event: c\n"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := newRig(t)
			r.start(t, Stream{Framing: Chunked, Whole: c.unit, MaxHeld: 64, Idle: 5 * time.Second})
			for i, part := range c.parts {
				r.writeNode(t, frame(part))
				got, err := readChunk(r.clientReader)
				if err != nil {
					t.Fatal(err)
				}
				if got != c.reads[i] {
					t.Errorf("after part %q the client read %q, want %q", part, got, c.reads[i])
				}
			}
			_ = r.node.CloseWrite()
			res := r.wait(t)
			var nodeErr *NodeError
			if !errors.As(res.Err, &nodeErr) {
				t.Fatalf("error %v, want a NodeError", res.Err)
			}
			if body := r.readBody(t); len(body) != 0 {
				t.Errorf("client read %q after the node closed, want nothing of the held %q", body, c.held)
			}
			if got, want := r.observed.String(), strings.Join(c.reads, ""); got != want {
				t.Errorf("Data saw %q, want only the bytes sent %q", got, want)
			}
		})
	}
}

func TestLoopSendsHeldBytesAtBodyEnd(t *testing.T) {
	cases := []struct {
		name     string
		framing  Framing
		length   int64
		node     string
		closeOut bool
	}{
		{"chunked", Chunked, 0, frame("a\n") + frame("b") + "0\r\n\r\n", false},
		{"length", Length, 3, "a\nb", false},
		{"until close", UntilClose, 0, "a\nb", true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := newRig(t)
			r.start(t, Stream{Framing: c.framing, Length: c.length, Whole: Lines, MaxHeld: 64})
			r.writeNode(t, c.node)
			if c.closeOut {
				_ = r.node.CloseWrite()
			}
			if res := r.wait(t); res.Err != nil {
				t.Fatalf("stream ended with %v", res.Err)
			}
			if body := string(r.readBody(t)); body != "a\nb" {
				t.Errorf("client read %q, want %q with the last line that has no newline", body, "a\nb")
			}
		})
	}
}

func TestLoopHoldsBoundedPart(t *testing.T) {
	r := newRig(t)
	r.start(t, Stream{Framing: Chunked, Whole: Lines, MaxHeld: 8, Idle: 5 * time.Second})
	// A part line of 8 bytes reaches MaxHeld and goes at once. A shorter
	// part waits for the rest of its line.
	for _, c := range []struct{ part, read string }{
		{"abcdefgh", "abcdefgh"},
		{"ij\nklm", "ij\n"},
		{"nopqrstu\n", "klmnopqrstu\n"},
	} {
		r.writeNode(t, frame(c.part))
		got, err := readChunk(r.clientReader)
		if err != nil {
			t.Fatal(err)
		}
		if got != c.read {
			t.Errorf("after part %q the client read %q, want %q", c.part, got, c.read)
		}
	}
	r.handle.Cancel()
	r.wait(t)
}

func TestLoopNodeFailures(t *testing.T) {
	cases := []struct {
		name   string
		node   string
		target error
	}{
		{"closed mid-body", "5\r\nhel", nil},
		{"bad framing", "5\r\nhello\r\nzz\r\n", ErrFraming},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := newRig(t)
			r.start(t, Stream{Framing: Chunked})
			r.writeNode(t, c.node)
			_ = r.node.CloseWrite()
			res := r.wait(t)
			var nodeErr *NodeError
			if !errors.As(res.Err, &nodeErr) {
				t.Fatalf("error %v, want a NodeError", res.Err)
			}
			if c.target != nil && !errors.Is(res.Err, c.target) {
				t.Errorf("error %v, want %v", res.Err, c.target)
			}
			if res.Reusable {
				t.Error("failed stream left the node connection reusable")
			}
		})
	}
}

func TestLoopClientGone(t *testing.T) {
	r := newRig(t)
	r.start(t, Stream{Framing: Chunked, Idle: 5 * time.Second})
	r.writeNode(t, "3\r\nabc\r\n")
	if _, err := readChunk(r.clientReader); err != nil {
		t.Fatal(err)
	}
	r.client.Close()

	res := r.wait(t)
	if !errors.Is(res.Err, ErrClientGone) {
		t.Fatalf("error %v, want ErrClientGone", res.Err)
	}
}

func TestLoopIdleTimeout(t *testing.T) {
	r := newRig(t)
	start := time.Now()
	r.start(t, Stream{Framing: Chunked, Idle: 200 * time.Millisecond})
	r.writeNode(t, "3\r\nabc\r\n")

	res := r.wait(t)
	if !errors.Is(res.Err, ErrIdle) {
		t.Fatalf("error %v, want ErrIdle", res.Err)
	}
	if waited := time.Since(start); waited < 200*time.Millisecond {
		t.Errorf("idle timeout of 200ms fired after %v", waited)
	}
}

func TestLoopCancel(t *testing.T) {
	r := newRig(t)
	r.start(t, Stream{Framing: Chunked})
	r.writeNode(t, "3\r\nabc\r\n")
	if _, err := readChunk(r.clientReader); err != nil {
		t.Fatal(err)
	}
	r.handle.Cancel()
	r.handle.Cancel()

	res := r.wait(t)
	if !errors.Is(res.Err, ErrCancelled) {
		t.Fatalf("error %v, want ErrCancelled", res.Err)
	}
}

func TestLoopSurvivesDataPanic(t *testing.T) {
	r := newRig(t)
	r.start(t, Stream{Framing: Chunked, Data: func([]byte) { panic("bug in Data") }})
	r.writeNode(t, "3\r\nabc\r\n")

	res := r.wait(t)
	if !errors.Is(res.Err, ErrDataPanic) {
		t.Fatalf("error %v, want ErrDataPanic", res.Err)
	}
	// The loops still serve other streams.
	other := newRig(t)
	other.start(t, Stream{Framing: Chunked})
	other.writeNode(t, "2\r\nok\r\n0\r\n\r\n")
	if res := other.wait(t); res.Err != nil {
		t.Fatalf("stream after a panic ended with %v", res.Err)
	}
}

// TestLoopSlowClientGetsEverything sends more than the sockets buffer
// while the client does not read, then reads it all.
func TestLoopSlowClientGetsEverything(t *testing.T) {
	r := newRig(t)
	r.start(t, Stream{Framing: Chunked, Idle: 5 * time.Second})
	var want bytes.Buffer
	sent := make(chan error, 1)
	go func() {
		w := bufio.NewWriter(r.node)
		for i := range 20000 {
			line := fmt.Sprintf("{\"i\":%d,\"pad\":%q}\n", i, bytes.Repeat([]byte("x"), 400))
			want.WriteString(line)
			fmt.Fprintf(w, "%x\r\n%s\r\n", len(line), line)
		}
		w.WriteString("0\r\n\r\n")
		sent <- w.Flush()
	}()
	time.Sleep(300 * time.Millisecond) // the client is not reading yet

	got := make(chan []byte, 1)
	go func() {
		body, _ := io.ReadAll(httputil.NewChunkedReader(r.clientReader))
		got <- body
	}()
	if err := <-sent; err != nil {
		t.Fatal(err)
	}

	res := r.wait(t)
	if res.Err != nil {
		t.Fatalf("stream ended with %v", res.Err)
	}
	if _, err := r.dst.Write([]byte("0\r\n\r\n")); err != nil {
		t.Fatal(err)
	}
	body := <-got
	if !bytes.Equal(body, want.Bytes()) {
		t.Fatalf("client read %d bytes, want %d, equal %v", len(body), want.Len(), bytes.Equal(body, want.Bytes()))
	}
	if !bytes.Equal(r.observed.Bytes(), want.Bytes()) {
		t.Error("Data saw other bytes than the client read")
	}
}

func TestLoopStalledClient(t *testing.T) {
	r := newRig(t)
	// Small buffers fill long before the node runs out of data, which it
	// sends until the test closes the connection.
	_ = r.client.SetReadBuffer(64 << 10)
	_ = r.dst.SetWriteBuffer(64 << 10)
	r.start(t, Stream{Framing: Chunked, Idle: 300 * time.Millisecond})
	go func() {
		w := bufio.NewWriter(r.node)
		chunk := bytes.Repeat([]byte("y"), 16<<10)
		for {
			fmt.Fprintf(w, "%x\r\n%s\r\n", len(chunk), chunk)
			if w.Flush() != nil {
				return
			}
		}
	}()

	res := r.wait(t)
	if !errors.Is(res.Err, ErrClientStalled) {
		t.Fatalf("error %v, want ErrClientStalled", res.Err)
	}
}

// BenchmarkLoopChunk measures one chunk from the node's write to the
// client's read of it through a loop, on loopback TCP.
func BenchmarkLoopChunk(b *testing.B) {
	r := newRig(b)

	// The stream holds back part lines as the proxy's streams do.
	h, err := Start(Stream{Framing: Chunked, Src: fdOf(b, r.src), Dst: fdOf(b, r.dst), Data: func([]byte) {},
		Whole: Lines, MaxHeld: 8 << 10})
	if err != nil {
		b.Fatal(err)
	}
	line := []byte(`{"model":"llama3:8b","created_at":"2026-12-04T15:56:26.467480373Z",` +
		`"message":{"role":"assistant","content":" dreams"},"done":false}` + "\n")
	frame := fmt.Appendf(nil, "%x\r\n%s\r\n", len(line), line)
	// In this ping-pong each read of the node's socket holds one frame,
	// which the loop sends on as the same bytes.
	got := make([]byte, len(frame))
	b.SetBytes(int64(len(line)))
	b.ReportAllocs()

	for b.Loop() {
		if _, err := r.node.Write(frame); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(r.clientReader, got); err != nil {
			b.Fatal(err)
		}
		if !bytes.Equal(got, frame) {
			b.Fatalf("client read %q, want %q", got, frame)
		}
	}
	h.Cancel()
	if res := h.Wait(); !errors.Is(res.Err, ErrCancelled) {
		b.Fatalf("stream ended with %v, want ErrCancelled", res.Err)
	}
}

func fdOf(b *testing.B, c *net.TCPConn) int {
	fd, err := Fd(c)
	if err != nil {
		b.Fatal(err)
	}
	return fd
}

// TestLoopSlowReaderIsNotStalled reads a large stream slower than the
// client's socket signals room for more, but steadily. The kernel reports
// the socket writable only once a third of its send buffer is free, so
// the loop must see the client's progress in the socket's queue.
func TestLoopSlowReaderIsNotStalled(t *testing.T) {
	r := newRig(t)
	// The kernel doubles the 1 MiB send buffer, so the socket is reported
	// writable after about 700 KB are read, which takes this client 0.4 s,
	// longer than the idle timeout.
	_ = r.dst.SetWriteBuffer(1 << 20)
	_ = r.client.SetReadBuffer(16 << 10)
	r.start(t, Stream{Framing: Chunked, Idle: 300 * time.Millisecond})
	const total = 4 << 20
	go func() {
		w := bufio.NewWriter(r.node)
		chunk := bytes.Repeat([]byte("z"), 16<<10)
		for sent := 0; sent < total; sent += len(chunk) {
			fmt.Fprintf(w, "%x\r\n%s\r\n", len(chunk), chunk)
		}
		w.WriteString("0\r\n\r\n")
		_ = w.Flush()
	}()

	received := make(chan int, 1)
	go func() {
		n := 0
		buf := make([]byte, 16<<10)
		for {
			m, err := r.clientReader.Read(buf)
			n += m
			if err != nil {
				received <- n
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
	}()

	res := r.wait(t)
	if res.Err != nil {
		t.Fatalf("stream to a client reading about 1.6 MB/s ended with %v", res.Err)
	}
	_ = r.dst.CloseWrite()
	if n := <-received; n < total {
		t.Errorf("client read %d bytes, want at least %d", n, total)
	}
}
