package loadgen

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
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
	// URLs are base URLs, and each new stream takes the next one.
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
	// with their final line.
	Streams int64
	// Chunks counts the lines (NDJSON) or data events (SSE) received in
	// the window.
	Chunks int64
	// Errors counts streams that failed or ended without a final line.
	Errors     int64
	FirstError string
	// Window is the measured time. Elapsed is the whole phase, ramp
	// included.
	Window  time.Duration
	Elapsed time.Duration
	// TTFB is the time from sending the request to the first chunk, for
	// streams that started in the window.
	TTFB Summary
	// ChunkLatency is the receive time of a chunk minus the time the node
	// wrote into it: created_at in NDJSON lines, and sent_at in SSE events
	// from a node that adds it (bench/cmd/stampsim). It is empty for SSE
	// events without sent_at.
	ChunkLatency Summary
	// Gap is the time between two consecutive chunks of one stream.
	Gap Summary
}

// maxLineBytes bounds one line of a streamed response.
const maxLineBytes = 64 << 10

// RunStreams runs the phase and returns when the window has ended and
// every worker has stopped.
func RunStreams(ctx context.Context, cfg StreamLoad) StreamResult {
	transport := &http.Transport{
		DialContext:         (&net.Dialer{Timeout: 3 * time.Second}).DialContext,
		MaxIdleConnsPerHost: cfg.Streams,
		DisableCompression:  true,
	}
	defer transport.CloseIdleConnections()
	g := &streamGen{
		start:  time.Now(),
		cfg:    cfg,
		client: &http.Client{Transport: transport},
	}
	g.windowStart = g.start.Add(cfg.Ramp)
	g.windowEnd = g.windowStart.Add(cfg.Duration)
	ctx, cancel := context.WithDeadline(ctx, g.windowEnd)
	defer cancel()

	workers := make([]*streamWorker, cfg.Streams)
	var wg sync.WaitGroup
	for i := range workers {
		w := &streamWorker{g: g, br: bufio.NewReaderSize(nil, maxLineBytes)}
		workers[i] = w
		delay := cfg.Ramp * time.Duration(i) / time.Duration(cfg.Streams)
		wg.Go(func() { w.run(ctx, i, delay) })
	}
	wg.Wait()
	return g.collect(workers)
}

// streamGen is the state that the workers of one phase share.
type streamGen struct {
	start       time.Time
	cfg         StreamLoad
	client      *http.Client
	windowStart time.Time
	windowEnd   time.Time
}

func (g *streamGen) inWindow(t time.Time) bool {
	return !t.Before(g.windowStart) && t.Before(g.windowEnd)
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

// streamWorker opens one stream after another and keeps its own samples,
// so that workers share no lock.
type streamWorker struct {
	g  *streamGen
	br *bufio.Reader

	streams, chunks, errors int64
	firstErr                error
	ttfb, latency, gap      []time.Duration
}

func (w *streamWorker) run(ctx context.Context, index int, delay time.Duration) {
	select {
	case <-ctx.Done():
		return
	case <-time.After(delay):
	}
	urls := w.g.cfg.URLs
	for n := index; ctx.Err() == nil; n++ {
		start := time.Now()
		err := w.stream(ctx, urls[n%len(urls)], start)
		switch {
		case err == nil:
			if w.g.inWindow(start) {
				w.streams++
			}
		case ctx.Err() == nil:
			w.errors++
			if w.firstErr == nil {
				w.firstErr = err
			}
			time.Sleep(errorPause)
		}
	}
}

// stream sends one request and reads its response to the end.
func (w *streamWorker) stream(ctx context.Context, base string, start time.Time) error {
	cfg := w.g.cfg
	body := bytes.NewReader(cfg.Body)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, base+cfg.Path, body)
	if err != nil {
		return fmt.Errorf("build request: %w", err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := w.g.client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 200))
		return &StatusError{Status: resp.StatusCode, Body: string(bytes.TrimSpace(msg))}
	}
	w.br.Reset(resp.Body)
	return w.readChunks(start)
}

// errNoFinalLine means the stream ended before its final line or event.
var errNoFinalLine = errors.New("stream ended without its final line")

// readChunks reads the response and records each chunk's samples. It
// returns nil once the final line (NDJSON) or [DONE] event (SSE) arrived
// and the body ended.
func (w *streamWorker) readChunks(start time.Time) error {
	var prev time.Time
	final := false
	for {
		line, err := w.br.ReadSlice('\n')
		now := time.Now()
		if errors.Is(err, io.EOF) && len(line) == 0 {
			if final {
				return nil
			}
			return errNoFinalLine
		}
		if err != nil {
			return fmt.Errorf("read stream: %w", err)
		}
		payload, last, ok := w.chunk(line)
		final = final || last
		if !ok {
			continue
		}
		w.record(payload, start, prev, now)
		prev = now
	}
}

// chunk returns the payload of a line that carries a chunk, and whether
// it is the stream's last chunk. SSE blank lines and [DONE] carry none.
func (w *streamWorker) chunk(line []byte) (payload []byte, last, ok bool) {
	line = bytes.TrimRight(line, "\r\n")
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

// record adds the samples of a chunk received at now. prev is the time of
// the stream's previous chunk, or zero for its first.
func (w *streamWorker) record(payload []byte, start, prev, now time.Time) {
	if prev.IsZero() {
		if w.g.inWindow(start) {
			w.ttfb = append(w.ttfb, now.Sub(start))
		}
	} else if w.g.inWindow(now) {
		w.gap = append(w.gap, now.Sub(prev))
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
	t, err := time.Parse(time.RFC3339Nano, string(value))
	return t, err == nil
}
