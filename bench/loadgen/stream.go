package loadgen

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"time"
)

// Format is the framing of a streamed response.
type Format int

const (
	// NDJSON is Ollama's framing: one JSON object per line, the last with
	// "done":true.
	NDJSON Format = iota
	// SSE is OpenAI's framing: "data: {...}" events ending with
	// "data: [DONE]".
	SSE
)

func (f Format) String() string {
	if f == SSE {
		return "SSE"
	}
	return "NDJSON"
}

// StreamLoad is a phase of concurrent streams. Each of Streams workers
// starts within Ramp, then opens one stream after another until the phase
// ends. Samples count only in the window of Duration that follows Ramp.
type StreamLoad struct {
	// URLs are base URLs (http://host:port). Worker i sends all its
	// streams to URLs[i % len(URLs)] over one keep-alive connection.
	URLs     []string
	Path     string
	Body     []byte
	Format   Format
	Streams  int
	Ramp     time.Duration
	Duration time.Duration
}

// StreamResult is the outcome of a stream phase.
type StreamResult struct {
	// Streams counts the streams that started in the window and ended
	// with their final line before the window ended.
	Streams int64
	// Chunks counts the lines (NDJSON) or data events (SSE) received in
	// the window.
	Chunks int64
	// Errors counts streams that failed or ended without a final line
	// before the window ended. It is 1 when the phase could not start,
	// and FirstError then gives the reason.
	Errors     int64
	FirstError string
	// Window is the measured time. Elapsed is the whole phase, ramp
	// included.
	Window  time.Duration
	Elapsed time.Duration
	// TTFB is the time from the start of a stream, connecting included
	// when the worker has no open connection, to its first chunk, for
	// streams that started in the window.
	TTFB Summary
	// ChunkLatency is the receive time of a chunk minus the time the node
	// wrote into it: created_at in NDJSON lines, and sent_at in SSE events
	// from a node that adds it (bench/cmd/stampsim). It is empty for SSE
	// events without sent_at. All chunks that one read(2) returns share
	// its receive time.
	ChunkLatency Summary
	// Gap is the time between two consecutive chunks of one stream.
	Gap Summary
}

// maxLineBytes bounds one line of a streamed response, newline included.
const maxLineBytes = 64 << 10

// connectTimeout bounds the TCP handshake of a new connection.
const connectTimeout = 3 * time.Second

// RunStreams runs the phase and returns when the window has ended and
// every connection is closed. The streams are read on a few epoll event
// loops (see streamLoop), so it needs Linux.
func RunStreams(ctx context.Context, cfg StreamLoad) StreamResult {
	g := &streamGen{start: time.Now(), cfg: cfg}
	g.windowStart = g.start.Add(cfg.Ramp)
	g.windowEnd = g.windowStart.Add(cfg.Duration)
	ctx, cancel := context.WithDeadline(ctx, g.windowEnd)
	defer cancel()

	targets, err := newStreamTargets(cfg)
	if err != nil {
		return g.failed(err)
	}
	workers := make([]*streamWorker, cfg.Streams)
	for i := range workers {
		workers[i] = &streamWorker{g: g, target: targets[i%len(targets)]}
	}
	if err := runStreamLoops(ctx, g, workers); err != nil {
		return g.failed(err)
	}
	return g.collect(workers)
}

// streamGen is the state that the workers of one phase share.
type streamGen struct {
	start       time.Time
	cfg         StreamLoad
	windowStart time.Time
	windowEnd   time.Time
}

func (g *streamGen) inWindow(t time.Time) bool {
	return !t.Before(g.windowStart) && t.Before(g.windowEnd)
}

// startTime returns when worker i of n opens its first stream: the
// workers start evenly within the ramp.
func (g *streamGen) startTime(i, n int) time.Time {
	return g.start.Add(g.cfg.Ramp * time.Duration(i) / time.Duration(n))
}

// failed returns the result of a phase that could not start.
func (g *streamGen) failed(err error) StreamResult {
	return StreamResult{
		Errors: 1, FirstError: err.Error(),
		Window: g.cfg.Duration, Elapsed: time.Since(g.start),
	}
}

func (g *streamGen) collect(workers []*streamWorker) StreamResult {
	var r StreamResult
	ttfb := make([][]time.Duration, len(workers))
	latency := make([][]time.Duration, len(workers))
	gap := make([][]time.Duration, len(workers))
	for i, w := range workers {
		r.Streams += w.streams
		r.Chunks += w.chunks
		r.Errors += w.errors
		if r.FirstError == "" && w.firstErr != nil {
			r.FirstError = w.firstErr.Error()
		}
		ttfb[i], latency[i], gap[i] = w.ttfb, w.latency, w.gap
	}
	r.Window = g.cfg.Duration
	r.Elapsed = time.Since(g.start)
	r.TTFB = Summarize(merge(ttfb))
	r.ChunkLatency = Summarize(merge(latency))
	r.Gap = Summarize(merge(gap))
	return r
}

// streamTarget is a server that workers stream from, and the request
// they send it.
type streamTarget struct {
	addr    *net.TCPAddr
	request []byte
}

// newStreamTargets resolves the base URLs and writes the request for
// each of them.
func newStreamTargets(cfg StreamLoad) ([]*streamTarget, error) {
	if cfg.Streams <= 0 {
		return nil, fmt.Errorf("invalid stream count %d, want 1 or more", cfg.Streams)
	}
	if len(cfg.URLs) == 0 {
		return nil, errors.New("no base URL")
	}
	targets := make([]*streamTarget, len(cfg.URLs))
	for i, raw := range cfg.URLs {
		u, err := url.Parse(raw)
		if err != nil || u.Scheme != "http" || u.Host == "" || u.Port() == "" {
			return nil, fmt.Errorf("invalid base URL %q, want http://host:port", raw)
		}
		addr, err := net.ResolveTCPAddr("tcp", u.Host)
		if err != nil {
			return nil, fmt.Errorf("resolve %s: %w", u.Host, err)
		}
		targets[i] = &streamTarget{addr: addr, request: streamRequest(u, cfg)}
	}
	return targets, nil
}

// streamRequest returns the HTTP/1.1 request of a stream as it goes on
// the wire.
func streamRequest(base *url.URL, cfg StreamLoad) []byte {
	path := base.EscapedPath() + cfg.Path
	if path == "" {
		path = "/"
	}
	var b bytes.Buffer
	b.WriteString("POST " + path + " HTTP/1.1\r\n")
	b.WriteString("Host: " + base.Host + "\r\n")
	b.WriteString("Content-Type: application/json\r\n")
	b.WriteString("Content-Length: " + strconv.Itoa(len(cfg.Body)) + "\r\n\r\n")
	b.Write(cfg.Body)
	return b.Bytes()
}

// streamWorker opens one stream after another and keeps its own samples.
// One event loop owns it, so its fields need no lock.
type streamWorker struct {
	g      *streamGen
	target *streamTarget

	streams, chunks, errors int64
	firstErr                error
	ttfb, latency, gap      []time.Duration

	// The fields below describe the current stream.
	start time.Time // when the stream started, before any connect
	prev  time.Time // receive time of the previous chunk, zero before the first
	final bool      // the final line or [DONE] event arrived
	// partial is the start of a line that the next read completes.
	partial []byte
}

// beginStream resets the state of the current stream.
func (w *streamWorker) beginStream(now time.Time) {
	w.start, w.prev, w.final = now, time.Time{}, false
	w.partial = w.partial[:0]
}

// endStream records the end of a stream: err is nil when its body ended
// after its final line.
func (w *streamWorker) endStream(err error, counted bool) {
	switch {
	case err == nil:
		if w.g.inWindow(w.start) && counted {
			w.streams++
		}
	case counted:
		w.errors++
		if w.firstErr == nil {
			w.firstErr = err
		}
	}
}

var (
	// errNoFinalLine means the stream ended before its final line or
	// event.
	errNoFinalLine = errors.New("stream ended without its final line")
	// errPartialLine means the body ended within a line.
	errPartialLine = errors.New("stream ended within a line")
	// errLongLine means a line is longer than maxLineBytes.
	errLongLine = fmt.Errorf("stream line longer than %d bytes", maxLineBytes)
)

// feed records the chunks of the complete lines in payload, all received
// at now, and keeps the last line in w.partial when it has no newline
// yet. payload starts with the bytes that w.partial held before.
func (w *streamWorker) feed(payload []byte, now time.Time) error {
	for {
		i := bytes.IndexByte(payload, '\n')
		if i < 0 {
			break
		}
		if i+1 > maxLineBytes {
			return errLongLine
		}
		w.line(payload[:i+1], now)
		payload = payload[i+1:]
	}
	if len(payload) >= maxLineBytes {
		return errLongLine
	}
	w.partial = append(w.partial[:0], payload...)
	return nil
}

// bodyEnded checks the stream once its body is complete.
func (w *streamWorker) bodyEnded() error {
	switch {
	case len(w.partial) > 0:
		return errPartialLine
	case !w.final:
		return errNoFinalLine
	}
	return nil
}

// line records the chunk that a line carries, if any.
func (w *streamWorker) line(line []byte, now time.Time) {
	payload, last, ok := w.chunk(line)
	w.final = w.final || last
	if !ok {
		return
	}
	w.record(payload, now)
	w.prev = now
}

// chunk returns the payload of a line that carries a chunk, and whether
// it is the stream's last chunk. SSE blank lines and [DONE] carry none.
func (w *streamWorker) chunk(line []byte) (payload []byte, last, ok bool) {
	line = trimLineEnd(line)
	if w.g.cfg.Format == NDJSON {
		return line, bytes.Contains(line, []byte(`"done":true`)), len(line) > 0
	}
	data, found := bytes.CutPrefix(line, []byte("data: "))
	if !found {
		return nil, false, false
	}
	if bytes.Equal(data, []byte("[DONE]")) {
		return nil, true, false
	}
	return data, false, true
}

// trimLineEnd removes the CR and LF bytes at the end of line.
func trimLineEnd(line []byte) []byte {
	for len(line) > 0 && (line[len(line)-1] == '\n' || line[len(line)-1] == '\r') {
		line = line[:len(line)-1]
	}
	return line
}

// record adds the samples of a chunk received at now.
func (w *streamWorker) record(payload []byte, now time.Time) {
	if w.prev.IsZero() {
		if w.g.inWindow(w.start) {
			w.ttfb = append(w.ttfb, now.Sub(w.start))
		}
	} else if w.g.inWindow(now) {
		w.gap = append(w.gap, now.Sub(w.prev))
	}
	if !w.g.inWindow(now) {
		return
	}
	w.chunks++
	key := createdAtKey
	if w.g.cfg.Format == SSE {
		key = sentAtKey
	}
	if sent, ok := timeField(payload, key); ok {
		w.latency = append(w.latency, now.Sub(sent))
	}
}

// createdAtKey starts the time field of an Ollama NDJSON line, and
// sentAtKey the one that bench/cmd/stampsim adds to SSE events.
var (
	createdAtKey = []byte(`"created_at":"`)
	sentAtKey    = []byte(`"sent_at":"`)
)

// timeField returns the RFC 3339 time of the JSON string field that key
// starts, such as `"created_at":"`.
func timeField(line, key []byte) (time.Time, bool) {
	_, rest, found := bytes.Cut(line, key)
	if !found {
		return time.Time{}, false
	}
	value, _, found := bytes.Cut(rest, []byte(`"`))
	if !found {
		return time.Time{}, false
	}
	if t, ok := parseRFC3339(value); ok {
		return t, true
	}
	t, err := time.Parse(time.RFC3339Nano, string(value))
	return t, err == nil
}
