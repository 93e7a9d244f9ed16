package main

import (
	"errors"
	"io"
	"net"
	"testing"
	"time"
)

// socketPair returns the server side of a loopback TCP connection as a
// rawSocket, and the client side.
func socketPair(t *testing.T) (*rawSocket, net.Conn, net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	defer ln.Close()
	client, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	t.Cleanup(func() { client.Close() })
	server, err := ln.Accept()
	if err != nil {
		t.Fatalf("accept: %v", err)
	}
	t.Cleanup(func() { server.Close() })
	var sock rawSocket
	if err := sock.init(server); err != nil {
		t.Fatalf("init: %v", err)
	}
	return &sock, server, client
}

func TestRawWriteStallsWithoutBlocking(t *testing.T) {
	sock, server, client := socketPair(t)
	server.(*net.TCPConn).SetWriteBuffer(4096)
	client.(*net.TCPConn).SetReadBuffer(4096)

	// The client never reads, so the buffers fill up.
	chunk := make([]byte, 200)
	for i := range 100_000 {
		start := time.Now()
		err := sock.Write(chunk)
		if took := time.Since(start); took > 100*time.Millisecond {
			t.Fatalf("write %d took %v, want it never to wait", i, took)
		}
		if errors.Is(err, errStalled) {
			return
		}
		if err != nil {
			t.Fatalf("write %d: %v, want nil or errStalled", i, err)
		}
	}
	t.Fatal("100,000 writes of 200 bytes to a client that does not read never stalled")
}

func TestRawWritePartlyTakenStalls(t *testing.T) {
	sock, server, client := socketPair(t)
	server.(*net.TCPConn).SetWriteBuffer(4096)
	client.(*net.TCPConn).SetReadBuffer(4096)
	// The buffers take part of a megabyte; a chunk must not be cut.
	if err := sock.Write(make([]byte, 1<<20)); !errors.Is(err, errStalled) {
		t.Errorf("write larger than the buffers = %v, want errStalled", err)
	}
}

func TestRawWriteFailsAfterClientCloses(t *testing.T) {
	sock, _, client := socketPair(t)
	client.Close()
	var err error
	// The first write after the client's close may succeed; the reset it
	// causes fails a later one.
	for range 100 {
		if err = sock.Write([]byte("data\n")); err != nil {
			break
		}
		time.Sleep(time.Millisecond)
	}
	if err == nil || errors.Is(err, errStalled) {
		t.Errorf("write to a closed client = %v, want the system call's error", err)
	}
}

func TestRawReadWaitsForData(t *testing.T) {
	sock, _, client := socketPair(t)
	go func() {
		time.Sleep(20 * time.Millisecond)
		client.Write([]byte("hello"))
		client.Close()
	}()
	buf := make([]byte, 16)
	n, err := sock.Read(buf)
	if err != nil || string(buf[:n]) != "hello" {
		t.Fatalf("Read = %q, %v, want \"hello\"", buf[:n], err)
	}
	if n, err := sock.Read(buf); n != 0 || err != io.EOF {
		t.Errorf("Read after the client closed = %d, %v, want 0, EOF", n, err)
	}
}

func TestRawReadHonoursDeadline(t *testing.T) {
	sock, server, _ := socketPair(t)
	server.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
	start := time.Now()
	_, err := sock.Read(make([]byte, 16))
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Errorf("Read past the deadline = %v, want a timeout", err)
	}
	if took := time.Since(start); took > time.Second {
		t.Errorf("Read returned after %v, want about 20ms", took)
	}
}
