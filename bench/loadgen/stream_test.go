package loadgen

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/llmproxy/llmproxy/internal/streamloop"
)

// streamServer is an HTTP server on 127.0.0.1 that counts the
// connections it accepted and closed.
type streamServer struct {
	url            string
	opened, closed atomic.Int64
}

func startStreamServer(t *testing.T, handler http.HandlerFunc) *streamServer {
	t.Helper()
	s := &streamServer{}
	srv := httptest.NewUnstartedServer(handler)
	srv.Config.ConnState = func(_ net.Conn, state http.ConnState) {
		switch state {
		case http.StateNew:
			s.opened.Add(1)
		case http.StateClosed, http.StateHijacked:
			s.closed.Add(1)
		}
	}
	srv.Start()
	t.Cleanup(srv.Close)
	s.url = srv.URL
	return s
}

// stamp is the time a test server writes into a chunk.
func stamp() string { return time.Now().UTC().Format(time.RFC3339Nano) }

// responses counts the responses of a test server, so that it can
// respond to the first n requests and stall the others.
type responses struct {
	n     int64
	count atomic.Int64
}

// stall reports whether the request is past the first n, and then waits
// until the client closes its connection.
func (rs *responses) stall(r *http.Request) bool {
	if rs.count.Add(1) <= rs.n {
		return false
	}
	<-r.Context().Done()
	return true
}

// ndjsonHandler sends a response of lines NDJSON lines to each of the
// first n requests, one line after each pause of every, and stalls the
// others.
func ndjsonHandler(n int64, lines int, every time.Duration) http.HandlerFunc {
	rs := &responses{n: n}
	return func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		if rs.stall(r) {
			return
		}
		w.Header().Set("Content-Type", "application/x-ndjson")
		for i := range lines {
			time.Sleep(every)
			fmt.Fprintf(w, `{"model":"m","created_at":%q,"done":%v}`+"\n", stamp(), i == lines-1)
			w.(http.Flusher).Flush()
		}
	}
}

// sseHandler sends a response of events SSE events and [DONE] to each
// of the first n requests, one event after each pause of every, and
// stalls the others.
func sseHandler(n int64, events int, every time.Duration) http.HandlerFunc {
	rs := &responses{n: n}
	return func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		if rs.stall(r) {
			return
		}
		w.Header().Set("Content-Type", "text/event-stream")
		for i := range events {
			time.Sleep(every)
			fmt.Fprintf(w, "data: {\"sent_at\":%q,\"id\":\"chatcmpl-%d\"}\n\n", stamp(), i)
			w.(http.Flusher).Flush()
		}
		fmt.Fprint(w, "data: [DONE]\n\n")
	}
}

// oneWorker is a phase of one worker that starts at once, so that every
// stream it opens starts in the window.
func oneWorker(url string, format Format, window time.Duration) StreamLoad {
	load := streamLoad(url, format)
	load.Streams, load.Ramp, load.Duration = 1, 0, window
	return load
}

func TestRunStreamsNDJSONCountsExactly(t *testing.T) {
	srv := startStreamServer(t, ndjsonHandler(3, 4, 10*time.Millisecond))
	res := RunStreams(context.Background(), oneWorker(srv.url, NDJSON, 600*time.Millisecond))
	if res.Errors != 0 {
		t.Fatalf("errors = %d, first: %s", res.Errors, res.FirstError)
	}
	if res.Streams != 3 {
		t.Errorf("streams = %d, want the 3 served", res.Streams)
	}
	if res.Chunks != 12 {
		t.Errorf("chunks = %d, want 3 streams of 4 lines", res.Chunks)
	}

	if res.ChunkLatency.Count != 12 {
		t.Errorf("chunk latency samples = %d, want one per line (12)", res.ChunkLatency.Count)
	}
	if res.ChunkLatency.P50 < 0 || res.ChunkLatency.P50 > 10*time.Millisecond {
		t.Errorf("chunk latency p50 = %v, want near zero on loopback", res.ChunkLatency.P50)
	}

	if res.TTFB.Count != 3 {
		t.Errorf("TTFB samples = %d, want one per stream (3)", res.TTFB.Count)
	}
	// The server waits 10 ms before the first line.
	if res.TTFB.P50 < 10*time.Millisecond || res.TTFB.P50 > 60*time.Millisecond {
		t.Errorf("TTFB p50 = %v, want about 10ms", res.TTFB.P50)
	}

	if res.Gap.Count != 9 {
		t.Errorf("gap samples = %d, want 3 per stream (9)", res.Gap.Count)
	}
	if res.Gap.P50 < 9*time.Millisecond || res.Gap.P50 > 40*time.Millisecond {
		t.Errorf("gap p50 = %v, want about 10ms", res.Gap.P50)
	}
}

func TestRunStreamsSSECountsEvents(t *testing.T) {
	srv := startStreamServer(t, sseHandler(2, 5, 5*time.Millisecond))
	res := RunStreams(context.Background(), oneWorker(srv.url, SSE, 500*time.Millisecond))
	if res.Errors != 0 {
		t.Fatalf("errors = %d, first: %s", res.Errors, res.FirstError)
	}
	if res.Streams != 2 {
		t.Errorf("streams = %d, want the 2 served", res.Streams)
	}
	if res.Chunks != 10 {
		t.Errorf("chunks = %d, want 2 streams of 5 data events, [DONE] not counted", res.Chunks)
	}
	if res.ChunkLatency.Count != 10 {
		t.Errorf("chunk latency samples = %d, want one per event with sent_at (10)", res.ChunkLatency.Count)
	}
	if res.ChunkLatency.P50 > 10*time.Millisecond {
		t.Errorf("chunk latency p50 = %v, want near zero on loopback", res.ChunkLatency.P50)
	}
	if res.Gap.Count != 8 {
		t.Errorf("gap samples = %d, want 4 per stream (8)", res.Gap.Count)
	}
}

func TestRunStreamsSendsRequest(t *testing.T) {
	type seen struct {
		method, path, host, contentType, body string
		contentLength                         int64
	}
	requests := make(chan seen, 100)
	srv := startStreamServer(t, func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		requests <- seen{r.Method, r.URL.Path, r.Host, r.Header.Get("Content-Type"), string(body), r.ContentLength}
		<-r.Context().Done()
	})
	load := oneWorker(srv.url, NDJSON, 200*time.Millisecond)
	RunStreams(context.Background(), load)
	got := <-requests
	want := seen{
		method: "POST", path: "/api/chat", host: strings.TrimPrefix(srv.url, "http://"),
		contentType: "application/json", body: string(load.Body), contentLength: int64(len(load.Body)),
	}
	if got != want {
		t.Errorf("request = %+v, want %+v", got, want)
	}
}

func TestRunStreamsReusesConnections(t *testing.T) {
	srv := startStreamServer(t, ndjsonHandler(40, 3, time.Millisecond))
	load := streamLoad(srv.url, NDJSON)
	load.Streams, load.Ramp, load.Duration = 4, 0, 500*time.Millisecond
	res := RunStreams(context.Background(), load)
	if res.Errors != 0 {
		t.Fatalf("errors = %d, first: %s", res.Errors, res.FirstError)
	}
	if res.Streams != 40 {
		t.Errorf("streams = %d, want the 40 served", res.Streams)
	}
	if got := srv.opened.Load(); got != 4 {
		t.Errorf("connections = %d, want one per worker (4)", got)
	}
}

func TestRunStreamsReconnectsAfterClose(t *testing.T) {
	handler := ndjsonHandler(10, 2, time.Millisecond)
	srv := startStreamServer(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Connection", "close")
		handler(w, r)
	})
	res := RunStreams(context.Background(), oneWorker(srv.url, NDJSON, 500*time.Millisecond))
	if res.Errors != 0 {
		t.Fatalf("errors = %d, first: %s", res.Errors, res.FirstError)
	}
	if res.Streams != 10 {
		t.Errorf("streams = %d, want the 10 served", res.Streams)
	}
	if got := srv.opened.Load(); got != 11 {
		t.Errorf("connections = %d, want one per request (11)", got)
	}
}

func TestRunStreamsSpreadsWorkersOverURLs(t *testing.T) {
	a := startStreamServer(t, ndjsonHandler(1000, 2, time.Millisecond))
	b := startStreamServer(t, ndjsonHandler(1000, 2, time.Millisecond))
	load := streamLoad(a.url, NDJSON)
	load.URLs = []string{a.url, b.url}
	load.Streams, load.Duration = 4, 200*time.Millisecond
	res := RunStreams(context.Background(), load)
	if res.Errors != 0 {
		t.Fatalf("errors = %d, first: %s", res.Errors, res.FirstError)
	}
	if a.opened.Load() != 2 || b.opened.Load() != 2 {
		t.Errorf("connections = %d and %d, want 2 to each URL", a.opened.Load(), b.opened.Load())
	}
}

func TestRunStreamsCountsCutConnection(t *testing.T) {
	srv := startStreamServer(t, func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		fmt.Fprintf(w, `{"created_at":%q,"done":false}`+"\n", stamp())
		w.(http.Flusher).Flush()
		panic(http.ErrAbortHandler)
	})
	res := RunStreams(context.Background(), oneWorker(srv.url, NDJSON, 200*time.Millisecond))
	if res.Streams != 0 {
		t.Errorf("streams = %d, want 0 when every stream is cut", res.Streams)
	}
	if res.Errors == 0 {
		t.Fatalf("no error counted for cut connections: %+v", res)
	}
	if !strings.Contains(res.FirstError, "closed the connection") {
		t.Errorf("first error = %q, want a closed connection", res.FirstError)
	}
	if res.Chunks == 0 {
		t.Error("no chunk counted before the cut")
	}
}

func TestRunStreamsCountsMissingFinalLine(t *testing.T) {
	srv := startStreamServer(t, func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		fmt.Fprintf(w, `{"created_at":%q,"done":false}`+"\n", stamp())
	})
	res := RunStreams(context.Background(), oneWorker(srv.url, NDJSON, 100*time.Millisecond))
	if res.Streams != 0 {
		t.Errorf("streams = %d, want 0", res.Streams)
	}
	if res.FirstError != errNoFinalLine.Error() {
		t.Errorf("first error = %q, want %q", res.FirstError, errNoFinalLine)
	}
}

func TestRunStreamsStatusError(t *testing.T) {
	srv := startStreamServer(t, func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "  node busy", http.StatusServiceUnavailable)
	})
	load := oneWorker(srv.url, NDJSON, 200*time.Millisecond)
	load.Streams = 2
	res := RunStreams(context.Background(), load)
	if res.Streams != 0 {
		t.Errorf("streams = %d, want 0", res.Streams)
	}
	if res.FirstError != "status 503: node busy" {
		t.Errorf("first error = %q, want status 503 with the body", res.FirstError)
	}
	// Each failure pauses its worker for errorPause.
	if limit := int64(2 * (200*time.Millisecond/errorPause + 1)); res.Errors == 0 || res.Errors > limit {
		t.Errorf("errors = %d, want 1 to %d", res.Errors, limit)
	}
}

func TestRunStreamsConnectRefused(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	url := "http://" + ln.Addr().String()
	if err := ln.Close(); err != nil {
		t.Fatal(err)
	}
	res := RunStreams(context.Background(), oneWorker(url, NDJSON, 100*time.Millisecond))
	if res.Errors == 0 {
		t.Fatal("no error counted")
	}
	if !strings.Contains(res.FirstError, "connection refused") {
		t.Errorf("first error = %q, want connection refused", res.FirstError)
	}
}

func TestRunStreamsInvalidURL(t *testing.T) {
	res := RunStreams(context.Background(), oneWorker("127.0.0.1:80", NDJSON, time.Second))
	if res.Errors != 1 || !strings.Contains(res.FirstError, "invalid base URL") {
		t.Errorf("errors = %d, first %q, want 1 for the invalid base URL", res.Errors, res.FirstError)
	}
}

func TestRunStreamsEndsWithStalledServer(t *testing.T) {
	srv := startStreamServer(t, func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, `{"created_at":%q,"done":false}`+"\n", stamp())
		w.(http.Flusher).Flush()
		<-r.Context().Done()
	})
	load := streamLoad(srv.url, NDJSON)
	load.Streams, load.Ramp, load.Duration = 50, 0, 200*time.Millisecond
	start := time.Now()
	res := RunStreams(context.Background(), load)
	if took := time.Since(start); took > 400*time.Millisecond {
		t.Errorf("phase took %v, want it to end at the window's end (200ms)", took)
	}
	if res.Errors != 0 {
		t.Errorf("errors = %d (%s), want none for streams the window's end cut", res.Errors, res.FirstError)
	}
	if res.Chunks != 50 {
		t.Errorf("chunks = %d, want the first line of each of 50 streams", res.Chunks)
	}
	waitFor(t, "the server to see every connection closed", func() bool {
		return srv.closed.Load() == 50
	})
}

func TestRunStreamsStopsWhenCancelled(t *testing.T) {
	srv := startStreamServer(t, ndjsonHandler(1<<20, 100, 10*time.Millisecond))
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	load := streamLoad(srv.url, NDJSON)
	load.Duration = time.Minute
	start := time.Now()
	res := RunStreams(ctx, load)
	if took := time.Since(start); took > time.Second {
		t.Errorf("phase took %v after its context ended at 100ms", took)
	}
	if res.Errors != 0 {
		t.Errorf("errors = %d (%s), want none for streams the cancel cut", res.Errors, res.FirstError)
	}
	waitFor(t, "the server to see every connection closed", func() bool {
		return srv.closed.Load() == srv.opened.Load()
	})
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// rawServer responds to each request on 127.0.0.1 by calling respond with
// the connection, on one goroutine per connection, until respond returns
// false or the client closes the connection.
func rawServer(t *testing.T, respond func(c net.Conn, n int) bool) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var requests atomic.Int64
	t.Cleanup(func() {
		_ = ln.Close()
		wg.Wait()
	})
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer c.Close()
				br := bufio.NewReader(c)
				for {
					req, err := http.ReadRequest(br)
					if err != nil {
						return
					}
					_, _ = io.Copy(io.Discard, req.Body)
					if !respond(c, int(requests.Add(1))) {
						return
					}
				}
			})
		}
	})
	return "http://" + ln.Addr().String()
}

// writePieces writes b in pieces whose sizes cycle through sizes, with a
// pause after each so that the client reads them one by one.
func writePieces(c net.Conn, b []byte, sizes []int) error {
	for i := 0; len(b) > 0; i++ {
		n := min(sizes[i%len(sizes)], len(b))
		if _, err := c.Write(b[:n]); err != nil {
			return err
		}
		b = b[n:]
		time.Sleep(300 * time.Microsecond)
	}
	return nil
}

// chunked encodes body as HTTP/1.1 chunks whose sizes cycle through sizes.
func chunked(body string, sizes []int) string {
	var b strings.Builder
	for i := 0; len(body) > 0; i++ {
		n := min(sizes[i%len(sizes)], len(body))
		fmt.Fprintf(&b, "%x\r\n%s\r\n", n, body[:n])
		body = body[n:]
	}
	b.WriteString("0\r\n\r\n")
	return b.String()
}

func TestRunStreamsSplitAcrossReads(t *testing.T) {
	const served = 3
	url := rawServer(t, func(c net.Conn, n int) bool {
		if n > served {
			// Hold the request until the client closes the connection.
			_, _ = c.Read(make([]byte, 1))
			return false
		}
		long := strings.Repeat("x", 20<<10)
		body := fmt.Sprintf(`{"created_at":%q,"done":false}`+"\n", stamp()) +
			fmt.Sprintf(`{"created_at":%q,"response":"%s","done":false}`+"\n", stamp(), long) +
			fmt.Sprintf(`{"created_at":%q,"done":true}`+"\n", stamp())
		response := "HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\n" +
			"Transfer-Encoding: chunked\r\n\r\n" + chunked(body, []int{5, 17, 3000, 1, 9000})
		return writePieces(c, []byte(response), []int{1, 2, 3, 5, 8, 13, 4000}) == nil
	})
	res := RunStreams(context.Background(), oneWorker(url, NDJSON, 2*time.Second))
	if res.Errors != 0 {
		t.Fatalf("errors = %d, first: %s", res.Errors, res.FirstError)
	}
	if res.Streams != served {
		t.Errorf("streams = %d, want the %d served", res.Streams, served)
	}
	if res.Chunks != 3*served || res.ChunkLatency.Count != 3*served {
		t.Errorf("chunks = %d with %d latency samples, want 3 lines per stream with created_at (%d)",
			res.Chunks, res.ChunkLatency.Count, 3*served)
	}
}

func TestRunStreamsContentLengthBody(t *testing.T) {
	const served = 5
	url := rawServer(t, func(c net.Conn, n int) bool {
		if n > served {
			_, _ = c.Read(make([]byte, 1))
			return false
		}
		body := fmt.Sprintf(`{"created_at":%q,"done":false}`+"\n"+`{"created_at":%q,"done":true}`+"\n",
			stamp(), stamp())
		response := fmt.Sprintf("HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s", len(body), body)
		return writePieces(c, []byte(response), []int{7, 30}) == nil
	})
	res := RunStreams(context.Background(), oneWorker(url, NDJSON, 300*time.Millisecond))
	if res.Errors != 0 {
		t.Fatalf("errors = %d, first: %s", res.Errors, res.FirstError)
	}
	if res.Streams != served || res.Chunks != 2*served {
		t.Errorf("streams = %d, chunks = %d, want %d streams of 2 lines", res.Streams, res.Chunks, served)
	}
}

func TestRunStreamsRetriesClosedIdleConnection(t *testing.T) {
	// The server closes each connection after one response without
	// saying so, as one whose idle timeout passed does.
	url := rawServer(t, func(c net.Conn, _ int) bool {
		body := chunked(fmt.Sprintf(`{"created_at":%q,"done":true}`+"\n", stamp()), []int{100})
		_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"+body)
		return false
	})
	res := RunStreams(context.Background(), oneWorker(url, NDJSON, 200*time.Millisecond))
	if res.Errors != 0 {
		t.Fatalf("errors = %d, first: %s", res.Errors, res.FirstError)
	}
	if res.Streams < 5 {
		t.Errorf("streams = %d, want many on new connections", res.Streams)
	}
}

func TestRunStreamsRejectsLongLine(t *testing.T) {
	url := rawServer(t, func(c net.Conn, _ int) bool {
		body := strings.Repeat("x", maxLineBytes+10) + "\n"
		_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"+chunked(body, []int{4096}))
		return true
	})
	res := RunStreams(context.Background(), oneWorker(url, NDJSON, 100*time.Millisecond))
	if res.Errors == 0 || res.FirstError != errLongLine.Error() {
		t.Errorf("errors = %d, first %q, want %q", res.Errors, res.FirstError, errLongLine)
	}
}

func TestParseHead(t *testing.T) {
	tests := []struct {
		name string
		head string
		want responseHead
	}{
		{"chunked", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
			responseHead{status: 200, framing: streamloop.Chunked, keepAlive: true}},
		{"length", "HTTP/1.1 200 OK\r\ncontent-length: 12\r\n\r\n",
			responseHead{status: 200, framing: streamloop.Length, length: 12, keepAlive: true}},
		{"until close", "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n",
			responseHead{status: 200, framing: streamloop.UntilClose}},
		{"connection close", "HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Length: 4\r\n\r\n",
			responseHead{status: 503, framing: streamloop.Length, length: 4}},
		{"HTTP/1.0 keep-alive", "HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 0\r\n\r\n",
			responseHead{status: 200, framing: streamloop.Length, keepAlive: true}},
		{"HTTP/1.0", "HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\n",
			responseHead{status: 200, framing: streamloop.Length, length: 3}},
		{"chunked after gzip", "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\nContent-Length: 9\r\n\r\n",
			responseHead{status: 200, framing: streamloop.Chunked, keepAlive: true}},
		{"gzip last", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
			responseHead{status: 200, framing: streamloop.UntilClose}},
		{"no content", "HTTP/1.1 204 No Content\r\n\r\n",
			responseHead{status: 204, framing: streamloop.Length, keepAlive: true}},
		{"continue", "HTTP/1.1 100 Continue\r\n\r\n",
			responseHead{status: 100, framing: streamloop.Length, keepAlive: true}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if n := headLength([]byte(tt.head + "body")); n != len(tt.head) {
				t.Fatalf("head length = %d, want %d", n, len(tt.head))
			}
			got, err := parseHead([]byte(tt.head))
			if err != nil {
				t.Fatal(err)
			}
			if got != tt.want {
				t.Errorf("head = %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestParseHeadRejectsMalformed(t *testing.T) {
	heads := map[string]string{
		"HTTP/2":           "HTTP/2 200 OK\r\n\r\n",
		"no status":        "HTTP/1.1\r\n\r\n",
		"short status":     "HTTP/1.1 20 OK\r\n\r\n",
		"header no colon":  "HTTP/1.1 200 OK\r\nTransfer-Encoding chunked\r\n\r\n",
		"space in name":    "HTTP/1.1 200 OK\r\nContent Length: 3\r\n\r\n",
		"two lengths":      "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
		"negative length":  "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
		"length not digit": "HTTP/1.1 200 OK\r\nContent-Length: 1x\r\n\r\n",
	}
	for name, head := range heads {
		if _, err := parseHead([]byte(head)); !errors.Is(err, errBadHead) {
			t.Errorf("%s: error %v, want errBadHead", name, err)
		}
	}
	if n := headLength([]byte("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n")); n != -1 {
		t.Errorf("head length of an incomplete head = %d, want -1", n)
	}
}

func TestParseRFC3339(t *testing.T) {
	valid := []string{
		"2026-01-02T03:04:05Z",
		"2026-01-02T03:04:05.1Z",
		"2026-01-02T03:04:05.123456789Z",
		"2026-12-31T23:59:59.999999999+01:00",
		"2024-02-29T00:00:00.5-07:30",
		"2000-02-29T12:00:00Z",
		"1969-12-31T23:59:59.999Z",
		"0000-01-01T00:00:00Z",
		"0000-03-01T00:00:00Z",
		"9999-12-31T23:59:59.999999999-23:59",
	}
	for _, s := range valid {
		want, err := time.Parse(time.RFC3339Nano, s)
		if err != nil {
			t.Fatalf("time.Parse(%q): %v", s, err)
		}
		got, ok := parseRFC3339([]byte(s))
		if !ok || !got.Equal(want) {
			t.Errorf("parseRFC3339(%q) = %v, %v, want %v", s, got, ok, want)
		}
	}
	invalid := []string{
		"2026-01-02 03:04:05Z",
		"2026-13-02T03:04:05Z",
		"2025-02-29T03:04:05Z",
		"1900-02-29T03:04:05Z",
		"2026-04-31T03:04:05Z",
		"2026-01-02T24:04:05Z",
		"2026-01-02T03:04:05.Z",
		"2026-01-02T03:04:05.1234567891Z",
		"2026-01-02T03:04:05",
		"2026-01-02T03:04:05+0100",
		"2026-01-02T03:04:05+01:00x",
	}
	for _, s := range invalid {
		if got, ok := parseRFC3339([]byte(s)); ok {
			t.Errorf("parseRFC3339(%q) = %v, want false", s, got)
		}
	}
}

// FuzzParseRFC3339 checks that every time the fast parser accepts is
// one that time.Parse accepts with the same value.
func FuzzParseRFC3339(f *testing.F) {
	f.Add("2026-01-02T03:04:05.123456789Z")
	f.Add("2026-12-31T23:59:59.9+14:00")
	f.Add("0000-01-01T00:00:00-23:59")
	f.Fuzz(func(t *testing.T, s string) {
		got, ok := parseRFC3339([]byte(s))
		if !ok {
			return
		}
		want, err := time.Parse(time.RFC3339Nano, s)
		if err != nil {
			t.Fatalf("parseRFC3339(%q) = %v, but time.Parse fails: %v", s, got, err)
		}
		if !got.Equal(want) {
			t.Fatalf("parseRFC3339(%q) = %v, want %v", s, got, want)
		}
	})
}
