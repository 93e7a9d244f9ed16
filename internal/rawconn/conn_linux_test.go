//go:build linux

package rawconn

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	crand "crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"math/big"
	"math/rand/v2"
	"net"
	"os"
	"sync"
	"syscall"
	"testing"
	"time"
)

// pair returns a wrapped accepted connection and the plain client end
// connected to it over loopback TCP.
func pair(t testing.TB) (*Conn, *net.TCPConn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	wl := Listener(ln)
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := wl.Accept()
		if err != nil {
			t.Error(err)
		}
		accepted <- c
	}()
	client, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	c := <-accepted
	rc, ok := c.(*Conn)
	if !ok {
		t.Fatalf("Accept returned %T, want *rawconn.Conn", c)
	}
	t.Cleanup(func() {
		rc.Close()
		client.Close()
	})
	return rc, client.(*net.TCPConn)
}

func TestLargeTransferBothWays(t *testing.T) {
	rc, client := pair(t)
	// Small buffers make write(2) return short counts and EAGAIN, so the
	// writer has to wait in the poller and resume where it stopped.
	if err := rc.SetWriteBuffer(16 << 10); err != nil {
		t.Fatal(err)
	}
	payload := make([]byte, 4<<20)
	for i := range payload {
		payload[i] = byte(rand.IntN(256))
	}

	var wg sync.WaitGroup
	wg.Add(2)
	var got []byte
	var readErr error
	go func() {
		defer wg.Done()
		got, readErr = io.ReadAll(client)
	}()
	go func() {
		defer wg.Done()
		n, err := rc.Write(payload)
		if err != nil || n != len(payload) {
			t.Errorf("Write = %d, %v; want %d, nil", n, err, len(payload))
		}
		if err := rc.CloseWrite(); err != nil {
			t.Error(err)
		}
	}()
	wg.Wait()
	if readErr != nil {
		t.Fatal(readErr)
	}
	if !bytes.Equal(got, payload) {
		t.Fatalf("client received %d bytes that differ from the %d sent", len(got), len(payload))
	}

	// The other way: the wrapped side reads what the client sends, in
	// whatever pieces the kernel hands over, and then gets io.EOF.
	go func() {
		_, _ = client.Write(payload)
		_ = client.CloseWrite()
	}()
	back, err := io.ReadAll(rc)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(back, payload) {
		t.Fatalf("wrapped side received %d bytes that differ from the %d sent", len(back), len(payload))
	}
	n, err := rc.Read(make([]byte, 16))
	if n != 0 || err != io.EOF {
		t.Fatalf("Read after the peer closed = %d, %v; want 0, io.EOF", n, err)
	}
}

func TestReadDeadlineIsATimeout(t *testing.T) {
	rc, _ := pair(t)
	if err := rc.SetReadDeadline(time.Now().Add(20 * time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	n, err := rc.Read(make([]byte, 16))
	if n != 0 || err == nil {
		t.Fatalf("Read = %d, %v; want a timeout", n, err)
	}
	var oe *net.OpError
	if !errors.As(err, &oe) || oe.Op != "read" || !oe.Timeout() {
		t.Fatalf("error %#v is not a read *net.OpError that times out", err)
	}
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("error %v does not wrap os.ErrDeadlineExceeded", err)
	}
}

func TestWriteDeadlineReportsBytesWritten(t *testing.T) {
	rc, client := pair(t)
	if err := client.SetReadBuffer(4 << 10); err != nil {
		t.Fatal(err)
	}
	if err := rc.SetWriteBuffer(4 << 10); err != nil {
		t.Fatal(err)
	}
	if err := rc.SetWriteDeadline(time.Now().Add(50 * time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	// The client reads nothing, so the buffers fill and the deadline passes.
	payload := make([]byte, 8<<20)
	n, err := rc.Write(payload)
	if err == nil || !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("Write = %d, %v; want a deadline error", n, err)
	}
	if n <= 0 || n >= len(payload) {
		t.Fatalf("Write reported %d bytes; want some but not all of %d", n, len(payload))
	}
	rc.SetReadDeadline(time.Time{})
	client.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(client, make([]byte, n)); err != nil {
		t.Fatalf("client could not read the %d bytes reported written: %v", n, err)
	}
}

func TestClosedAndResetErrors(t *testing.T) {
	rc, client := pair(t)
	// An RST from the peer: linger 0 makes Close send one.
	if err := client.SetLinger(0); err != nil {
		t.Fatal(err)
	}
	client.Close()
	deadline := time.Now().Add(5 * time.Second)
	var err error
	for time.Now().Before(deadline) {
		if _, err = rc.Write([]byte("x")); err != nil {
			break
		}
		time.Sleep(time.Millisecond)
	}
	if !errors.Is(err, syscall.ECONNRESET) && !errors.Is(err, syscall.EPIPE) {
		t.Fatalf("Write to a reset connection = %v; want ECONNRESET or EPIPE", err)
	}
	var oe *net.OpError
	if !errors.As(err, &oe) || oe.Op != "write" {
		t.Fatalf("error %#v is not a write *net.OpError", err)
	}

	rc.Close()
	if _, err := rc.Read(make([]byte, 1)); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Read after Close = %v; want net.ErrClosed", err)
	}
	if _, err := rc.Write([]byte("x")); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Write after Close = %v; want net.ErrClosed", err)
	}
}

func TestCloseWakesBlockedRead(t *testing.T) {
	rc, _ := pair(t)
	done := make(chan error, 1)
	go func() {
		_, err := rc.Read(make([]byte, 16))
		done <- err
	}()
	time.Sleep(20 * time.Millisecond)
	rc.Close()
	select {
	case err := <-done:
		if !errors.Is(err, net.ErrClosed) {
			t.Fatalf("blocked Read ended with %v; want net.ErrClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not wake a Read waiting for data")
	}
}

func TestConcurrentReadAndWrite(t *testing.T) {
	rc, client := pair(t)
	// The client echoes what it reads, so the wrapped side writes and
	// reads at the same time from two goroutines.
	go func() { _, _ = io.Copy(client, client) }()
	payload := bytes.Repeat([]byte("0123456789abcdef"), 1<<16)
	go func() {
		for off := 0; off < len(payload); off += 1000 {
			end := min(off+1000, len(payload))
			if _, err := rc.Write(payload[off:end]); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	got := make([]byte, len(payload))
	rc.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(rc, got); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, payload) {
		t.Fatal("echoed bytes differ from those written")
	}
}

// TestTLSOverWrappedConn runs a TLS session over a wrapped connection, as
// the proxy does for nodes behind https: handshake, a transfer larger than
// a TLS record each way, and close_notify at the end.
func TestTLSOverWrappedConn(t *testing.T) {
	rc, client := pair(t)
	cert, pool := selfSigned(t)
	server := tls.Server(client, &tls.Config{Certificates: []tls.Certificate{cert}})
	tc := tls.Client(rc, &tls.Config{RootCAs: pool, ServerName: "127.0.0.1"})

	payload := bytes.Repeat([]byte("llmproxy over TLS "), 8<<10)
	go func() {
		buf := make([]byte, len(payload))
		if _, err := io.ReadFull(server, buf); err != nil {
			t.Error(err)
			return
		}
		if _, err := server.Write(buf); err != nil {
			t.Error(err)
		}
		server.Close()
	}()
	if _, err := tc.Write(payload); err != nil {
		t.Fatalf("write over TLS: %v", err)
	}
	got, err := io.ReadAll(tc)
	if err != nil {
		t.Fatalf("read over TLS: %v", err)
	}
	if !bytes.Equal(got, payload) {
		t.Fatalf("received %d bytes that differ from the %d sent", len(got), len(payload))
	}
}

// selfSigned makes a certificate for 127.0.0.1 and a pool that trusts it.
func selfSigned(t *testing.T) (tls.Certificate, *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), crand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IsCA:                  true,
		BasicConstraintsValid: true,
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
	}
	der, err := x509.CreateCertificate(crand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(leaf)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, pool
}

func TestWrapLeavesOtherConnsAlone(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	if got := Wrap(a); got != a {
		t.Fatalf("Wrap(net.Pipe end) = %T; want the same connection", got)
	}
}

// BenchmarkPingPong sends one small message each way per iteration over
// loopback TCP, through a wrapped connection and through a plain one.
func BenchmarkPingPong(b *testing.B) {
	for _, wrapped := range []bool{true, false} {
		name := "net"
		if wrapped {
			name = "rawconn"
		}
		b.Run(name, func(b *testing.B) {
			rc, client := pair(b)
			var c net.Conn = rc
			if !wrapped {
				c = rc.Unwrap()
			}
			go func() { _, _ = io.Copy(client, client) }()
			msg := make([]byte, 256)
			buf := make([]byte, 256)
			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				if _, err := c.Write(msg); err != nil {
					b.Fatal(err)
				}
				if _, err := io.ReadFull(c, buf); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// readAfter reads from rc and reports how long the read took.
func readAfter(rc *Conn) (time.Duration, error) {
	start := time.Now()
	_, err := rc.Read(make([]byte, 16))
	return time.Since(start), err
}

func TestLaterDeadlineHolds(t *testing.T) {
	rc, _ := pair(t)
	rc.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
	want := time.Now().Add(150 * time.Millisecond)
	rc.SetReadDeadline(want)
	took, err := readAfter(rc)
	if !isDeadline(err) {
		t.Fatalf("Read error %v; want a deadline error", err)
	}
	if now := time.Now(); now.Before(want) {
		t.Fatalf("Read timed out %v before the deadline (after %v)", want.Sub(now), took)
	}
}

func TestEarlierDeadlineFires(t *testing.T) {
	rc, _ := pair(t)
	rc.SetReadDeadline(time.Now().Add(time.Hour))
	rc.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
	done := make(chan error, 1)
	go func() { _, err := readAfter(rc); done <- err }()
	select {
	case err := <-done:
		if !isDeadline(err) {
			t.Fatalf("Read error %v; want a deadline error", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Read still waits 10s after a 20ms deadline that replaced a later one")
	}
}

func TestClearedDeadlineWaitsForData(t *testing.T) {
	rc, client := pair(t)
	rc.SetReadDeadline(time.Now().Add(10 * time.Millisecond))
	rc.SetReadDeadline(time.Time{})
	go func() {
		time.Sleep(100 * time.Millisecond)
		client.Write([]byte("late"))
	}()
	buf := make([]byte, 16)
	n, err := rc.Read(buf)
	if err != nil || string(buf[:n]) != "late" {
		t.Fatalf("Read = %q, %v; want the data sent after the cleared deadline", buf[:n], err)
	}
}

func TestDeadlinePassedBeforeReadMovesOn(t *testing.T) {
	rc, client := pair(t)
	rc.SetReadDeadline(time.Now().Add(5 * time.Millisecond))
	rc.SetReadDeadline(time.Now().Add(10 * time.Second))
	// The poller's deadline passes while no read waits.
	time.Sleep(30 * time.Millisecond)
	client.Write([]byte("x"))
	n, err := rc.Read(make([]byte, 4))
	if n != 1 || err != nil {
		t.Fatalf("Read = %d, %v; want the byte, the deadline being 10s away", n, err)
	}
	// A raw read straight on the poller gets the passed deadline too, and
	// clearing the deadline lets it wait.
	raw, _ := rc.SyscallConn()
	rc.SetReadDeadline(time.Time{})
	go func() {
		time.Sleep(20 * time.Millisecond)
		client.Write([]byte("y"))
	}()
	var got int
	err = raw.Read(func(fd uintptr) bool {
		var b [1]byte
		n, err := Read(int(fd), b[:])
		got = n
		return err != syscall.EAGAIN
	})
	if err != nil || got != 1 {
		t.Fatalf("raw read = %d, %v; want one byte after clearing the deadline", got, err)
	}
}

func TestPastDeadlineInterruptsRead(t *testing.T) {
	rc, _ := pair(t)
	rc.SetReadDeadline(time.Now().Add(time.Hour))
	done := make(chan error, 1)
	go func() { _, err := readAfter(rc); done <- err }()
	time.Sleep(20 * time.Millisecond)
	rc.SetDeadline(time.Unix(1, 0))
	select {
	case err := <-done:
		if !isDeadline(err) {
			t.Fatalf("Read error %v; want a deadline error", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("a deadline in the past did not interrupt the read")
	}
}

func TestLaterWriteDeadlineHolds(t *testing.T) {
	rc, client := pair(t)
	client.SetReadBuffer(4 << 10)
	rc.SetWriteBuffer(4 << 10)
	rc.SetWriteDeadline(time.Now().Add(10 * time.Millisecond))
	want := time.Now().Add(150 * time.Millisecond)
	rc.SetWriteDeadline(want)
	_, err := rc.Write(make([]byte, 8<<20))
	if !isDeadline(err) {
		t.Fatalf("Write error %v; want a deadline error", err)
	}
	if now := time.Now(); now.Before(want) {
		t.Fatalf("Write timed out %v before the deadline", want.Sub(now))
	}
}

func TestPassedWriteDeadlineFailsWrite(t *testing.T) {
	rc, _ := pair(t)
	rc.SetWriteDeadline(time.Now().Add(10 * time.Millisecond))
	time.Sleep(30 * time.Millisecond)
	n, err := rc.Write([]byte("x"))
	if n != 0 || !isDeadline(err) {
		t.Fatalf("Write = %d, %v; want 0 and a deadline error", n, err)
	}
	var oe *net.OpError
	if !errors.As(err, &oe) || oe.Op != "write" || !oe.Timeout() {
		t.Fatalf("error %#v is not a write *net.OpError that times out", err)
	}
	rc.SetWriteDeadline(time.Time{})
	if _, err := rc.Write([]byte("x")); err != nil {
		t.Fatalf("Write after clearing the deadline: %v", err)
	}
}

func TestClearedWriteDeadlineLetsWriteWait(t *testing.T) {
	rc, client := pair(t)
	client.SetReadBuffer(4 << 10)
	rc.SetWriteBuffer(4 << 10)
	rc.SetWriteDeadline(time.Now().Add(20 * time.Millisecond))
	rc.SetWriteDeadline(time.Time{})
	payload := make([]byte, 512<<10)
	go func() {
		time.Sleep(100 * time.Millisecond)
		io.Copy(io.Discard, client)
	}()
	n, err := rc.Write(payload)
	if n != len(payload) || err != nil {
		t.Fatalf("Write = %d, %v; want all %d bytes once the reader drains", n, err, len(payload))
	}
}

func TestPastWriteDeadlineInterruptsWrite(t *testing.T) {
	rc, client := pair(t)
	client.SetReadBuffer(4 << 10)
	rc.SetWriteBuffer(4 << 10)
	rc.SetWriteDeadline(time.Now().Add(time.Hour))
	done := make(chan error, 1)
	go func() {
		_, err := rc.Write(make([]byte, 8<<20))
		done <- err
	}()
	time.Sleep(50 * time.Millisecond)
	rc.SetDeadline(time.Unix(1, 0))
	select {
	case err := <-done:
		if !isDeadline(err) {
			t.Fatalf("Write error %v; want a deadline error", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("a deadline in the past did not interrupt the waiting write")
	}
}

func TestWriteStallLetsSteadyReaderGoOn(t *testing.T) {
	rc, client := pair(t)
	// Linux doubles the 1 MiB send buffer and reports room only once a
	// third of it is free: about 0.4 s for this reader, longer than the
	// stall bound. The receive buffer stays above loopback's segment
	// size, so that the reader's window updates are not held back.
	rc.SetWriteBuffer(1 << 20)
	client.SetReadBuffer(256 << 10)
	rc.SetWriteStall(300 * time.Millisecond)

	const total = 4 << 20
	received := make(chan int64, 1)
	go func() {
		var n int64
		buf := make([]byte, 16<<10)
		for n < total {
			m, err := client.Read(buf)
			n += int64(m)
			if err != nil {
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
		received <- n
	}()

	n, err := rc.Write(make([]byte, total))
	if n != total || err != nil {
		t.Fatalf("Write = %d, %v; want all %d bytes to a reader that keeps reading", n, err, total)
	}
	if rc.WriteStalled() {
		t.Error("WriteStalled after a write that completed")
	}
	if got := <-received; got != total {
		t.Errorf("client read %d bytes, want %d", got, total)
	}
}

func TestWriteStallEndsWriteToIdleReader(t *testing.T) {
	rc, client := pair(t)
	client.SetReadBuffer(4 << 10)
	rc.SetWriteBuffer(4 << 10)
	rc.SetWriteStall(100 * time.Millisecond)
	done := make(chan error, 1)
	go func() {
		_, err := rc.Write(make([]byte, 8<<20))
		done <- err
	}()
	select {
	case err := <-done:
		if !isDeadline(err) {
			t.Fatalf("Write error %v; want a deadline error", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("a write to a client that reads nothing did not end")
	}
	if !rc.WriteStalled() {
		t.Error("WriteStalled is false after the stall bound ended the write")
	}
	rc.SetWriteStall(0)
	if rc.WriteStalled() {
		t.Error("WriteStalled still true after SetWriteStall reset it")
	}
}

func TestIdleSeesUnreadBytesAndClose(t *testing.T) {
	rc, peer := pair(t)
	if !rc.Idle() {
		t.Fatal("Idle is false on a quiet connection")
	}
	if _, err := peer.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	// The test waits for the byte to arrive.
	deadline := time.Now().Add(5 * time.Second)
	for rc.Idle() && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if rc.Idle() {
		t.Fatal("Idle is true with a byte waiting")
	}
	// Idle only looked: the byte is still there to read.
	buf := make([]byte, 1)
	if n, err := rc.Read(buf); n != 1 || err != nil || buf[0] != 'x' {
		t.Fatalf("Read after Idle = %d, %v, %q; want the byte x", n, err, buf[:n])
	}
	if !rc.Idle() {
		t.Error("Idle is false once the byte was read")
	}

	if err := peer.Close(); err != nil {
		t.Fatal(err)
	}
	for rc.Idle() && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if rc.Idle() {
		t.Error("Idle is true after the peer closed the connection")
	}
}

// respondAfter has the peer read want bytes, wait for d, and then write
// response, or close the connection when response is nil. The returned
// channel gets the bytes the peer read, and is closed empty on an error.
func respondAfter(t *testing.T, peer *net.TCPConn, want int, d time.Duration, response []byte) <-chan []byte {
	t.Helper()
	got := make(chan []byte, 1)
	go func() {
		defer close(got)
		peer.SetReadDeadline(time.Now().Add(10 * time.Second))
		b := make([]byte, want)
		if _, err := io.ReadFull(peer, b); err != nil {
			t.Errorf("peer read: %v", err)
			return
		}
		time.Sleep(d)
		if response == nil {
			peer.Close()
		} else if _, err := peer.Write(response); err != nil {
			t.Errorf("peer write: %v", err)
		}
		got <- b
	}()
	return got
}

func TestWriteAwaitReadSavesEmptyRead(t *testing.T) {
	for _, await := range []bool{true, false} {
		rc, peer := pair(t)
		rc.SetReadDeadline(time.Now().Add(10 * time.Second))
		req := []byte("GET / HTTP/1.1\r\nHost: n\r\n\r\n")
		// The peer responds late, so a read right after the write finds
		// nothing yet.
		got := respondAfter(t, peer, len(req), 30*time.Millisecond, []byte("response"))
		var n int
		var err error
		if await {
			n, err = rc.WriteAwaitRead(req)
		} else {
			n, err = rc.Write(req)
		}
		if n != len(req) || err != nil {
			t.Fatalf("write = %d, %v; want %d, nil", n, err, len(req))
		}
		buf := make([]byte, 16)
		n, err = rc.Read(buf)
		if string(buf[:n]) != "response" || err != nil {
			t.Fatalf("Read = %q, %v; want the response", buf[:n], err)
		}
		if b := <-got; !bytes.Equal(b, req) {
			t.Fatalf("peer read %q; want %q", b, req)
		}
		switch {
		case await && rc.reads != 1:
			t.Errorf("WriteAwaitRead then Read made %d read(2) calls; want 1", rc.reads)
		case !await && rc.reads < 2:
			// The control case shows that the response came after the read
			// started, which the case above relies on.
			t.Errorf("Write then Read made %d read(2) calls; want 2 or more", rc.reads)
		}
	}
}

func TestWriteAwaitReadEndsAtDeadline(t *testing.T) {
	// The peer never responds.
	rc, _ := pair(t)
	rc.SetReadDeadline(time.Now().Add(30 * time.Millisecond))
	if n, err := rc.WriteAwaitRead([]byte("req")); n != 3 || err != nil {
		t.Fatalf("WriteAwaitRead = %d, %v; want 3, nil", n, err)
	}
	if _, err := rc.Read(make([]byte, 8)); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("Read after the wait = %v; want a deadline error", err)
	}
}

func TestPastDeadlineInterruptsWriteAwaitRead(t *testing.T) {
	// The peer never responds.
	rc, _ := pair(t)
	rc.SetReadDeadline(time.Now().Add(time.Hour))
	go func() {
		time.Sleep(20 * time.Millisecond)
		rc.SetDeadline(time.Unix(1, 0))
	}()
	if n, err := rc.WriteAwaitRead([]byte("req")); n != 3 || err != nil {
		t.Fatalf("WriteAwaitRead = %d, %v; want 3, nil", n, err)
	}
	if _, err := rc.Read(make([]byte, 8)); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("Read after the interrupted wait = %v; want a deadline error", err)
	}
}

func TestWriteAwaitReadSeesPeerClose(t *testing.T) {
	rc, peer := pair(t)
	rc.SetReadDeadline(time.Now().Add(10 * time.Second))
	respondAfter(t, peer, 3, 10*time.Millisecond, nil)
	if n, err := rc.WriteAwaitRead([]byte("req")); n != 3 || err != nil {
		t.Fatalf("WriteAwaitRead = %d, %v; want 3, nil", n, err)
	}
	if n, err := rc.Read(make([]byte, 8)); n != 0 || err != io.EOF {
		t.Fatalf("Read after the peer closed = %d, %v; want io.EOF", n, err)
	}
}

func TestWriteAwaitReadLargerThanSendBuffer(t *testing.T) {
	rc, peer := pair(t)
	if err := rc.SetWriteBuffer(4 << 10); err != nil {
		t.Fatal(err)
	}
	rc.SetReadDeadline(time.Now().Add(10 * time.Second))
	rc.SetWriteDeadline(time.Now().Add(10 * time.Second))
	payload := make([]byte, 1<<20)
	for i := range payload {
		payload[i] = byte(i * 7)
	}
	got := respondAfter(t, peer, len(payload), 0, []byte("ok"))
	if n, err := rc.WriteAwaitRead(payload); n != len(payload) || err != nil {
		t.Fatalf("WriteAwaitRead = %d, %v; want %d, nil", n, err, len(payload))
	}
	buf := make([]byte, 8)
	if n, err := rc.Read(buf); string(buf[:n]) != "ok" || err != nil {
		t.Fatalf("Read = %q, %v; want ok", buf[:n], err)
	}
	if b := <-got; !bytes.Equal(b, payload) {
		t.Fatal("the peer did not read the payload as written")
	}
}

func TestWriteAwaitReadReportsWriteErrors(t *testing.T) {
	rc, peer := pair(t)
	if err := peer.SetLinger(0); err != nil {
		t.Fatal(err)
	}
	peer.Close()
	// The test waits for the reset to arrive.
	deadline := time.Now().Add(5 * time.Second)
	for rc.Idle() && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	rc.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, err := rc.WriteAwaitRead([]byte("req"))
	if !errors.Is(err, syscall.ECONNRESET) && !errors.Is(err, syscall.EPIPE) {
		t.Fatalf("WriteAwaitRead to a reset connection = %v; want ECONNRESET or EPIPE", err)
	}
	var oe *net.OpError
	if !errors.As(err, &oe) || oe.Op != "write" {
		t.Fatalf("error %#v is not a write *net.OpError", err)
	}

	rc.Close()
	if _, err := rc.WriteAwaitRead([]byte("req")); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("WriteAwaitRead after Close = %v; want net.ErrClosed", err)
	}
}
