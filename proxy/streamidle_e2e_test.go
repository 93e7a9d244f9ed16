package proxy_test

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/llmproxy/llmproxy/app"
	"github.com/llmproxy/llmproxy/config"
	"github.com/llmproxy/llmproxy/internal/testenv"
)

// chatLine returns one NDJSON line of a chat stream.
func chatLine(content string, done bool) string {
	return fmt.Sprintf(`{"model":"m","created_at":"2026-01-01T00:00:00Z",`+
		`"message":{"role":"assistant","content":%q},"done":%v}`+"\n", content, done)
}

// postHTTP10 sends a streamed /api/chat request over HTTP/1.0, which the
// proxy relays line by line instead of on its event loop, and returns the
// connection.
func postHTTP10(t *testing.T, addr string) *net.TCPConn {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	body := `{"model":"m","messages":[{"role":"user","content":"hi"}],"stream":true}`
	fmt.Fprintf(conn, "POST /api/chat HTTP/1.0\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s",
		len(body), body)
	return conn.(*net.TCPConn)
}

// proxyFor starts a proxy in front of the node at url with the given
// upstream.idle.
func proxyFor(t *testing.T, url string, idle time.Duration) *app.App {
	t.Helper()
	cfg := testenv.Config(t)
	cfg.Nodes = append(cfg.Nodes, config.DefaultNode(url))
	cfg.Upstream.Idle = idle
	return testenv.Proxy(t, cfg)
}

// readWholeStream reads an HTTP/1.0 stream from proxy to its end and
// fails the test when it carries an error line or lacks the final line.
func readWholeStream(t *testing.T, proxy *app.App, condition string) {
	t.Helper()
	conn := postHTTP10(t, proxy.Addr())
	conn.SetReadDeadline(time.Now().Add(20 * time.Second))
	got, err := io.ReadAll(conn)
	if err != nil {
		t.Fatalf("reading the stream: %v\n%s", err, got)
	}
	text := string(got)
	if strings.Contains(text, `"error"`) {
		t.Fatalf("the stream was cut although %s:\n%s", condition, text)
	}
	if !strings.Contains(text, `"done":true`) {
		t.Errorf("the stream has no final line:\n%s", text)
	}
}

func TestStreamGapsUnderIdleNotCut(t *testing.T) {
	// Each gap is under upstream.idle, and together they are well over it.
	gaps := []time.Duration{300 * time.Millisecond, 800 * time.Millisecond,
		300 * time.Millisecond, 800 * time.Millisecond}
	node := scriptedNode(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/x-ndjson")
		for i, gap := range gaps {
			time.Sleep(gap)
			io.WriteString(w, chatLine(fmt.Sprint("word", i), false))
			w.(http.Flusher).Flush()
		}
		io.WriteString(w, chatLine("", true))
	})
	readWholeStream(t, proxyFor(t, node, time.Second), "no silence reached upstream.idle")
}

func TestStalledHTTP10ClientFreesNode(t *testing.T) {
	// The node writes far more than the socket buffers between it and a
	// client that reads nothing, and notes when a write fails.
	nodeGone := make(chan struct{})
	line := chatLine(strings.Repeat("x", 200), false)
	node := scriptedNode(t, func(w http.ResponseWriter, r *http.Request) {
		defer close(nodeGone)
		w.Header().Set("Content-Type", "application/x-ndjson")
		for range 500_000 {
			if _, err := io.WriteString(w, line); err != nil {
				return
			}
		}
		io.WriteString(w, chatLine("", true))
	})
	cfg := testenv.Config(t)
	cfg.Nodes = append(cfg.Nodes, config.DefaultNode(node))
	cfg.Upstream.Idle = 500 * time.Millisecond
	proxy, logs := testenv.JSONProxy(t, cfg, 0)

	conn := postHTTP10(t, proxy.Addr())
	if err := conn.SetReadBuffer(4 << 10); err != nil {
		t.Fatal(err)
	}
	head, err := bufio.NewReader(conn).Peek(12)
	if err != nil || string(head) != "HTTP/1.0 200" && string(head) != "HTTP/1.1 200" {
		t.Fatalf("response starts %q, %v; want status 200", head, err)
	}
	// The client now reads nothing more.
	select {
	case <-nodeGone:
	case <-time.After(20 * time.Second):
		t.Fatal("the node still streams to a client that read nothing for 20s")
	}
	testenv.WaitFor(t, 5*time.Second, "the stall in the request log", func() bool {
		return strings.Contains(logs.String(), "client read nothing within upstream.idle")
	})
}

// hijackedNode starts a node whose POST handler writes the raw response
// bytes itself, so that a test controls how they are split into TCP
// writes. script gets the connection after the request was read.
func hijackedNode(t *testing.T, script func(conn net.Conn)) string {
	t.Helper()
	return scriptedNode(t, func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		conn, _, err := w.(http.Hijacker).Hijack()
		if err != nil {
			t.Errorf("hijack: %v", err)
			return
		}
		defer conn.Close()
		script(conn)
	})
}

// chunkedHead is the head of a chunked NDJSON response.
const chunkedHead = "HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\n" +
	"Transfer-Encoding: chunked\r\n\r\n"

// chunk frames line as one HTTP chunk.
func chunk(line string) string { return fmt.Sprintf("%x\r\n%s\r\n", len(line), line) }

func TestChunkSplitAcrossReadsGetsIdleEach(t *testing.T) {
	first, second := chatLine("one", false), chatLine("two", false)
	node := hijackedNode(t, func(conn net.Conn) {
		io.WriteString(conn, chunkedHead+chunk(first))
		// Each part of the second chunk comes within upstream.idle of the
		// one before, and both together take longer.
		time.Sleep(700 * time.Millisecond)
		framed := chunk(second)
		io.WriteString(conn, framed[:len(framed)/2])
		time.Sleep(700 * time.Millisecond)
		io.WriteString(conn, framed[len(framed)/2:]+chunk(chatLine("", true))+"0\r\n\r\n")
	})
	readWholeStream(t, proxyFor(t, node, time.Second), "each part came within upstream.idle")
}

func TestSilenceAfterPartialChunkIsIdle(t *testing.T) {
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	node := hijackedNode(t, func(conn net.Conn) {
		// The head and half of the first chunk come in one write, and
		// then the node falls silent.
		framed := chunk(chatLine("one", false))
		io.WriteString(conn, chunkedHead+framed[:len(framed)/2])
		<-release
	})
	cfg := testenv.Config(t)
	cfg.Nodes = append(cfg.Nodes, config.DefaultNode(node))
	cfg.Upstream.Idle = 500 * time.Millisecond
	cfg.Upstream.FirstByte = time.Minute
	proxy := testenv.Proxy(t, cfg)

	conn := postHTTP10(t, proxy.Addr())
	// Within the first-byte timeout, so only the idle timeout can end it.
	conn.SetReadDeadline(time.Now().Add(30 * time.Second))
	got, err := io.ReadAll(conn)
	if err != nil {
		t.Fatalf("the stream did not end before the first-byte timeout: %v\n%s", err, got)
	}
	if !strings.Contains(string(got), "no data from node within the idle timeout") {
		t.Errorf("the stream does not end with the idle timeout error:\n%s", got)
	}
}

func TestSteadySlowHTTP10ReaderNotCut(t *testing.T) {
	const lines = 30_000
	line := chatLine(strings.Repeat("x", 200), false)
	node := scriptedNode(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/x-ndjson")
		for range lines {
			if _, err := io.WriteString(w, line); err != nil {
				return
			}
		}
		io.WriteString(w, chatLine("", true))
	})
	// The proxy's send buffer to the client grows to megabytes, and Linux
	// wakes a writer only once a third of it is free: longer than this
	// idle timeout for a client that reads about 2 MB/s.
	proxy := proxyFor(t, node, 300*time.Millisecond)

	conn := postHTTP10(t, proxy.Addr())
	conn.SetReadDeadline(time.Now().Add(60 * time.Second))
	var got []byte
	buf := make([]byte, 32<<10)
	for {
		n, err := conn.Read(buf)
		got = append(got, buf[:n]...)
		if err != nil {
			break
		}
		time.Sleep(15 * time.Millisecond)
	}
	text := string(got)
	if strings.Contains(text, `"error"`) || !strings.Contains(text, `"done":true`) {
		t.Fatalf("a client that kept reading lost the stream after %d bytes", len(got))
	}
}
