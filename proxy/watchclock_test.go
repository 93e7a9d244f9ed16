package proxy

import (
	"context"
	"errors"
	"net"
	"testing"
	"time"
)

// tcpPair returns the accepted and the dialed end of a loopback TCP
// connection.
func tcpPair(t *testing.T) (server, client net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			t.Error(err)
		}
		accepted <- c
	}()
	client, err = net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	server = <-accepted
	t.Cleanup(func() {
		server.Close()
		client.Close()
	})
	return server, client
}

func TestWatchNoticesAClientThatLeaves(t *testing.T) {
	server, client := tcpPair(t)
	ctx, w := watchClient(context.Background(), server)
	defer w.release()
	client.Close()
	select {
	case <-ctx.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("the watch did not notice the closed client")
	}
	if !errors.Is(context.Cause(ctx), errClientGone) {
		t.Fatalf("cause = %v, want errClientGone", context.Cause(ctx))
	}
	// The context ends before the watch's read goroutine does, and gone
	// waits for neither.
	deadline := time.Now().Add(5 * time.Second)
	for !w.gone() && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if !w.gone() {
		t.Error("gone() is false after the client closed")
	}
}

func TestWatchStoppedEarlyNeverReads(t *testing.T) {
	server, client := tcpPair(t)
	_, w := watchClient(context.Background(), server)
	w.stop()
	client.Close()
	time.Sleep(watchDelay + 3*watchTick)
	w.mu.Lock()
	started, queued := w.started, w.queued
	w.mu.Unlock()
	if started {
		t.Error("a watch stopped before watchDelay started its read")
	}
	if queued {
		t.Error("a watch stopped before watchDelay is still queued")
	}
	if w.Err() != nil {
		t.Fatalf("a stopped watch was cancelled: %v", w.Err())
	}
	w.release()
}

func TestWatchStartsOnlyInItsOwnUse(t *testing.T) {
	server, _ := tcpPair(t)
	w := &clientWatch{conn: server, armed: true, uses: 2}
	// A tick that took the watch in its first use, before a release,
	// must not start the read of the next use.
	w.startUse(1)
	if w.started {
		t.Fatal("startUse started the read of a later use")
	}
	w.startUse(2)
	if !w.started {
		t.Fatal("startUse did not start the read of the current use")
	}
	w.stop()
}

func TestWatchClockStopsWhenIdle(t *testing.T) {
	server, _ := tcpPair(t)
	_, w := watchClient(context.Background(), server)
	w.release()
	deadline := time.Now().Add(watchClockRest + 2*time.Second)
	for time.Now().Before(deadline) {
		watches.mu.Lock()
		running := watches.running
		watches.mu.Unlock()
		if !running {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("the watch clock still ticks %v after the last watch", watchClockRest+2*time.Second)
}

func TestNewRequestStartsDueWatches(t *testing.T) {
	first, _ := tcpPair(t)
	_, a := watchClient(context.Background(), first)
	defer a.release()
	time.Sleep(watchDelay + watchDelay/4)
	second, _ := tcpPair(t)
	_, b := watchClient(context.Background(), second)
	defer b.release()
	a.mu.Lock()
	started := a.started
	a.mu.Unlock()
	if !started {
		t.Fatal("a watch past watchDelay did not start when the next request began")
	}
	b.mu.Lock()
	started = b.started
	b.mu.Unlock()
	if started {
		t.Fatal("the new request's watch started before watchDelay")
	}
}
