package ollamasim

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// completion is one generation request, whatever route it came on.
type completion struct {
	entry      *modelEntry
	prompt     []int // tokens fed to the model, context included
	seed       uint64
	numPredict int // maximum generated tokens; zero or negative means no limit
	numCtx     int
	keepAlive  time.Duration
	asJSON     bool
	start      time.Time // when the request arrived; load_duration counts from here
}

// outcome holds the statistics of a finished completion, as Ollama reports
// them on the final line.
type outcome struct {
	doneReason         string // "stop" or "length"
	tokens             []int  // prompt and generated tokens: generate's "context"
	promptEvalCount    int
	evalCount          int
	totalDuration      time.Duration
	loadDuration       time.Duration
	promptEvalDuration time.Duration
	evalDuration       time.Duration
}

// metrics is the timing part of Ollama's final line, in nanoseconds.
type metrics struct {
	TotalDuration      int64 `json:"total_duration"`
	LoadDuration       int64 `json:"load_duration"`
	PromptEvalCount    int   `json:"prompt_eval_count"`
	PromptEvalDuration int64 `json:"prompt_eval_duration"`
	EvalCount          int   `json:"eval_count"`
	EvalDuration       int64 `json:"eval_duration"`
}

func (o *outcome) metrics() *metrics {
	return &metrics{
		TotalDuration:      int64(o.totalDuration),
		LoadDuration:       int64(o.loadDuration),
		PromptEvalCount:    o.promptEvalCount,
		PromptEvalDuration: int64(o.promptEvalDuration),
		EvalCount:          o.evalCount,
		EvalDuration:       int64(o.evalDuration),
	}
}

// complete runs c: it waits for a slot and the model, evaluates the prompt
// tokens the slot has not cached, and generates tokens one by one, passing
// each piece to emit. It returns the context's error when the client goes
// away, and errServerBusy when the queue is full.
func (s *Server) complete(
	ctx context.Context,
	c *completion,
	emit func(piece string) error,
) (*outcome, error) {
	// Wait for a slot. As in Ollama, load_duration includes the wait.
	l, err := s.sched.acquire(ctx, s.ticketFor(c, c.prompt))
	if err != nil {
		return nil, err
	}
	o := &outcome{loadDuration: time.Since(c.start)}
	seq := c.prompt
	defer func() { s.sched.release(l, seq) }()

	// Evaluate the part of the prompt the slot has not cached.
	evalStart := time.Now()
	o.promptEvalCount = len(c.prompt) - l.cached
	if err := s.pause(ctx, perTokens(s.cfg.PromptTokensPerSec, o.promptEvalCount)); err != nil {
		return nil, err
	}
	o.promptEvalDuration = time.Since(evalStart)

	// Generate, one paced token at a time.
	genStart := time.Now()
	seq = make([]int, len(c.prompt), len(c.prompt)+s.cfg.MaxTokens+8)
	copy(seq, c.prompt)
	tokens := newTokenStream(c.seed, s.cfg.MinTokens, s.cfg.MaxTokens, c.asJSON)
	for {
		if c.numPredict > 0 && o.evalCount >= c.numPredict {
			o.doneReason = "length"
			break
		}
		piece, last := tokens.next()
		f, _ := s.faults.get()
		if err := s.pause(ctx, perTokens(s.cfg.TokensPerSec, 1)+f.TokenDelay); err != nil {
			return nil, err
		}
		if err := emit(piece); err != nil {
			return nil, err
		}
		seq = append(seq, tokenID(piece))
		o.evalCount++
		if last {
			o.doneReason = "stop"
			break
		}
	}
	o.evalDuration = time.Since(genStart)
	o.totalDuration = time.Since(c.start)
	o.tokens = seq
	return o, nil
}

func (s *Server) ticketFor(c *completion, prompt []int) *ticket {
	return &ticket{
		key:       c.entry.key,
		name:      c.entry.spec.Name,
		numCtx:    c.numCtx,
		sizeBytes: c.entry.spec.SizeBytes,
		prompt:    prompt,
		keepAlive: c.keepAlive,
	}
}

// ModelReady reports whether a chat or generate request for the model name,
// without num_ctx, would start without a load: the node has the model, the
// model is not embedding-only, and it is loaded with the default context
// length. It does not check for a free slot.
func (s *Server) ModelReady(name string) bool {
	entry := s.models.get(name)
	if entry == nil || entry.spec.Embedding {
		return false
	}
	return s.sched.isLoaded(entry.key, s.contextLength(entry.spec, 0))
}

// perTokens returns the time n tokens take at rate tokens per second, and
// zero when rate is zero (no pacing).
func perTokens(rate float64, n int) time.Duration {
	if rate <= 0 || n <= 0 {
		return 0
	}
	return time.Duration(float64(n) / rate * float64(time.Second))
}

// preload loads the model of c without generating, as a request without a
// prompt does.
func (s *Server) preload(ctx context.Context, c *completion) error {
	t := s.ticketFor(c, nil)
	t.preload = true
	l, err := s.sched.acquire(ctx, t)
	if err != nil {
		return err
	}
	s.sched.release(l, nil)
	return nil
}

// completionFormat describes how one route frames and shapes a completion.
type completionFormat struct {
	stream bool
	sse    bool       // server-sent events; NDJSON otherwise
	errors errorShape // also sets the content type of a whole response
	// events marks the /v1/responses and /v1/messages streams: named
	// events, and no "data: [DONE]" at the end. Their whole responses end
	// with a newline.
	events bool
	chunk  func(piece string) []any          // the frames of one token
	final  func(o *outcome) []any            // the last frames of a stream
	whole  func(text string, o *outcome) any // the response when not streaming
}

// respondCompletion runs c and sends the response framed and shaped as a
// describes.
func (s *Server) respondCompletion(
	w http.ResponseWriter,
	r *http.Request,
	c *completion,
	a completionFormat,
) {
	var frames *frameWriter
	var text strings.Builder
	emit := func(piece string) error {
		if !a.stream {
			text.WriteString(piece)
			return nil
		}
		if frames == nil {
			frames = s.newCompletionFrames(w, a)
		}
		for _, v := range a.chunk(piece) {
			if err := frames.write(v); err != nil {
				return err
			}
		}
		return nil
	}

	o, err := s.complete(r.Context(), c, emit)
	if err != nil {
		s.completionFailed(w, r, frames != nil, a.errors, err)
		return
	}
	s.finishCompletion(w, a, frames, text.String(), o)
}

// newCompletionFrames starts the stream of a completion.
func (s *Server) newCompletionFrames(w http.ResponseWriter, a completionFormat) *frameWriter {
	if a.events {
		w.Header().Set("Cache-Control", "no-cache")
	}
	return newFrameWriter(w, a.sse, s.cutStream)
}

// finishCompletion sends the whole response of a finished completion, or
// the last frames of its stream. frames is nil when no frame was sent.
func (s *Server) finishCompletion(
	w http.ResponseWriter,
	a completionFormat,
	frames *frameWriter,
	text string,
	o *outcome,
) {
	if !a.stream {
		switch {
		case a.events:
			writeJSONLine(w, http.StatusOK, contentOpenAIJSON, a.whole(text, o))
		case a.errors != shapeOllama:
			writeJSON(w, http.StatusOK, contentOpenAIJSON, a.whole(text, o))
		default:
			writeJSON(w, http.StatusOK, contentJSON, a.whole(text, o))
		}
		return
	}

	if frames == nil {
		frames = s.newCompletionFrames(w, a)
	}
	for _, v := range a.final(o) {
		if err := frames.write(v); err != nil {
			s.rec.noteCancelled()
			return
		}
	}
	if a.events {
		return
	}
	if err := frames.end(); err != nil {
		s.rec.noteCancelled()
	}
}

// completionFailed responds to a request whose completion stopped with err. A
// client that went away gets nothing and is counted as cancelled.
func (s *Server) completionFailed(
	w http.ResponseWriter,
	r *http.Request,
	started bool,
	shape errorShape,
	err error,
) {
	switch {
	case r.Context().Err() != nil:
		s.rec.noteCancelled()
	case errors.Is(err, errServerBusy):
		s.rec.noteRejected()
		writeError(w, shape, http.StatusServiceUnavailable, err.Error())
	case started:
		// A write failed mid-stream: the client is gone.
		s.rec.noteCancelled()
	case errors.Is(err, errServerClosed):
		writeError(w, shape, http.StatusServiceUnavailable, err.Error())
	default:
		writeError(w, shape, http.StatusInternalServerError, err.Error())
	}
}

// options are the fields of Ollama's "options" object the simulation uses.
type options struct {
	seed        *int64
	temperature *float64
	numPredict  int
	numCtx      int
}

// parseOptions reads the options the simulation honours. Others are
// accepted and ignored, as by a model without them.
func parseOptions(raw map[string]any) (options, error) {
	var o options
	for key, v := range raw {
		if v == nil {
			continue
		}
		n, ok := v.(float64)
		switch key {
		case "seed", "temperature", "num_predict", "num_ctx":
			if !ok {
				return o, fmt.Errorf("option %q must be a number, got %v", key, v)
			}
		default:
			continue
		}
		switch key {
		case "seed":
			seed := int64(n)
			o.seed = &seed
		case "temperature":
			o.temperature = &n
		case "num_predict":
			o.numPredict = int(n)
		case "num_ctx":
			o.numCtx = int(n)
		}
	}
	return o, nil
}

// completionSeed returns the seed of a completion: fixed by the model, the
// prompt and options.seed when the request is deterministic (a seed, or
// temperature 0), drawn from the node's generator otherwise.
func (s *Server) completionSeed(model string, prompt []int, opts options) uint64 {
	deterministic := opts.seed != nil || (opts.temperature != nil && *opts.temperature == 0)
	if !deterministic {
		return s.randomSeed()
	}
	var seed int64
	if opts.seed != nil {
		seed = *opts.seed
	}
	return hashSeed(modelKey(model), fmt.Sprint(prompt), strconv.FormatInt(seed, 10))
}

// contextLength returns the num_ctx a request runs with: its own, or the
// node default, clamped to what the model supports.
func (s *Server) contextLength(spec ModelSpec, requested int) int {
	n := requested
	if n <= 0 {
		n = s.cfg.ContextLength
	}
	return min(n, spec.ContextLength)
}

// parseKeepAlive decodes keep_alive as Ollama does: a duration string
// ("5m"), a number of seconds, or a negative value meaning forever. An
// absent value means the node default.
func (s *Server) parseKeepAlive(raw json.RawMessage) (time.Duration, error) {
	if len(raw) == 0 || bytes.Equal(raw, []byte("null")) {
		return s.cfg.KeepAlive, nil
	}
	var v any
	if err := json.Unmarshal(raw, &v); err != nil {
		return 0, err
	}
	var d time.Duration
	switch t := v.(type) {
	case float64:
		d = time.Duration(t * float64(time.Second))
	case string:
		var err error
		if seconds, perr := strconv.ParseFloat(t, 64); perr == nil {
			d = time.Duration(seconds * float64(time.Second))
		} else if d, err = time.ParseDuration(t); err != nil {
			return 0, err
		}
	default:
		return 0, fmt.Errorf("unsupported type for keep_alive: %s", raw)
	}
	if d < 0 {
		return forever, nil
	}
	return d, nil
}

// hasFormat reports whether a "format" value requests JSON output: "json"
// or a schema object.
func hasFormat(raw json.RawMessage) bool {
	trimmed := bytes.TrimSpace(raw)
	return len(trimmed) > 0 && !bytes.Equal(trimmed, []byte("null")) &&
		!bytes.Equal(trimmed, []byte(`""`))
}
