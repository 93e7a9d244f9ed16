package cache

import (
	"bytes"
	"encoding/json"
	"fmt"

	"github.com/valyala/fastjson"
)

// Aggregator turns an upstream generation response, as received, into the
// stored form. It reads NDJSON lines on /api routes (a single object is a
// one-line stream) and on /v1 routes either SSE events or one JSON object.
// An Aggregator is not safe for concurrent use.
type Aggregator struct {
	route    route
	maxBytes int64

	pending []byte // the start of a line not yet ended
	event   []byte // SSE: data lines of the event being read
	object  bool   // /v1: the response is one JSON object, read at the end
	started bool   // the first non-space byte has been seen
	held    int64  // bytes held, checked against maxBytes

	text, thinking []byte
	toolCalls      []json.RawMessage
	v1Calls        []toolCall
	logprobs       []json.RawMessage
	choiceLogprobs choiceLogprobs
	final          []byte
	finishReason   string
	usage          []byte
	fingerprint    string

	done     bool // the final line, or data: [DONE], was read
	finished bool // finish was called
	err      error
	parser   fastjson.Parser
}

// toolCall is an OpenAI tool call merged from stream deltas.
type toolCall struct {
	index          int64
	id, kind, name string
	arguments      []byte
}

// NewAggregator returns an Aggregator for the response to a KindResponse
// plan. It keeps at most l1.max_bytes of a response, and a larger response
// is not stored.
func (c *Cache) NewAggregator(p Plan) *Aggregator {
	return &Aggregator{route: p.route, maxBytes: c.maxEntryBytes}
}

// Write feeds the next bytes of the upstream response, in any chunking. It
// copies what it keeps and always returns len(b) and a nil error, so that
// it can sit in an io.MultiWriter next to the client without cutting the
// client's stream. A malformed response is reported by Cache.Store.
func (a *Aggregator) Write(b []byte) (int, error) {
	n := len(b)
	if a.err != nil || a.finished {
		return n, nil
	}
	if !a.started {
		rest := bytes.TrimLeft(b, " \t\r\n")
		if len(rest) == 0 {
			return n, nil
		}
		a.started = true
		a.object = a.route.isV1() && rest[0] == '{'
	}
	if a.object {
		a.pending = append(a.pending, b...)
		a.grow(int64(len(b)))
		return n, nil
	}
	for len(b) > 0 && a.err == nil {
		i := bytes.IndexByte(b, '\n')
		if i < 0 {
			a.pending = append(a.pending, b...)
			a.grow(int64(len(b)))
			break
		}
		line := b[:i]
		if len(a.pending) > 0 {
			a.held -= int64(len(a.pending))
			line = append(a.pending, line...)
			a.pending = a.pending[:0]
		}
		a.line(line)
		b = b[i+1:]
	}
	return n, nil
}

// grow counts n more bytes held and fails the response past maxBytes.
func (a *Aggregator) grow(n int64) {
	a.held += n
	if a.held > a.maxBytes && a.err == nil {
		a.fail(fmt.Errorf("%w: over %d bytes", ErrTooLarge, a.maxBytes))
	}
}

func (a *Aggregator) fail(err error) {
	a.err = err
	a.pending, a.event, a.text, a.thinking = nil, nil, nil, nil
	a.toolCalls, a.v1Calls, a.logprobs = nil, nil, nil
	a.choiceLogprobs = choiceLogprobs{}
}

// line handles one line of an NDJSON or SSE stream.
func (a *Aggregator) line(l []byte) {
	l = bytes.TrimSuffix(l, []byte{'\r'})
	if !a.route.isV1() {
		a.setErr(a.ndjsonLine(l))
		return
	}
	switch {
	case len(l) == 0:
		a.setErr(a.dispatchEvent())
	case bytes.HasPrefix(l, []byte("data:")):
		data := bytes.TrimPrefix(l[len("data:"):], []byte{' '})
		before := len(a.event)
		if before > 0 {
			a.event = append(a.event, '\n')
		}
		a.event = append(a.event, data...)
		a.grow(int64(len(a.event) - before))
	}
	// Other SSE fields (event:, id:, retry:) and comments carry no response.
}

func (a *Aggregator) setErr(err error) {
	if err != nil && a.err == nil {
		a.fail(err)
	}
}

// dispatchEvent handles the SSE event whose data lines were read.
func (a *Aggregator) dispatchEvent() error {
	if len(a.event) == 0 {
		return nil
	}
	a.held -= int64(len(a.event))
	data := a.event
	a.event = a.event[:0]
	if string(data) == "[DONE]" {
		if a.finishReason == "" {
			return fmt.Errorf("%w: stream ended without finish_reason", ErrInvalidResponse)
		}
		a.done = true
		return nil
	}
	if a.done {
		return fmt.Errorf("%w: data after [DONE]", ErrInvalidResponse)
	}
	v, err := a.parseObject(data)
	if err != nil {
		return err
	}
	return a.v1Value(v, "delta")
}

// parseObject parses one JSON object of the response and rejects error
// objects, which Ollama sends in place of a response or mid-stream.
func (a *Aggregator) parseObject(b []byte) (*fastjson.Value, error) {
	v, err := parseStrict(&a.parser, b)
	if err != nil {
		return nil, err
	}
	if v.Type() != fastjson.TypeObject {
		return nil, fmt.Errorf("%w: not a JSON object", ErrInvalidResponse)
	}
	if v.Exists("error") {
		return nil, fmt.Errorf("%w: error response", ErrInvalidResponse)
	}
	return v, nil
}

// parseStrict parses an upstream response after checking that it is valid
// JSON: fastjson's parser alone also accepts forms such as "." as a number,
// which would be stored and sent on to clients as they are.
func parseStrict(p *fastjson.Parser, b []byte) (*fastjson.Value, error) {
	if err := fastjson.ValidateBytes(b); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidResponse, err)
	}
	v, err := p.ParseBytes(b)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidResponse, err)
	}
	return v, nil
}

// add appends s to the text field dst and counts its bytes.
func (a *Aggregator) add(dst *[]byte, s []byte) {
	*dst = append(*dst, s...)
	a.grow(int64(len(s)))
}

// addRaw appends a copy of each element of arr to dst.
func (a *Aggregator) addRaw(dst *[]json.RawMessage, arr []*fastjson.Value) {
	for _, e := range arr {
		raw := appendValue(nil, e)
		*dst = append(*dst, raw)
		a.grow(int64(len(raw)))
	}
}

// finish reads what is left of the response and returns its stored form.
func (a *Aggregator) finish() (*response, error) {
	if !a.finished && a.err == nil {
		a.flush()
	}
	a.finished = true
	switch {
	case a.err != nil:
		return nil, a.err
	case !a.done && a.route.isV1():
		return nil, fmt.Errorf("%w: no data: [DONE] event", ErrIncomplete)
	case !a.done:
		return nil, fmt.Errorf("%w: no final line with done true", ErrIncomplete)
	}
	return a.result(), nil
}

// flush reads the last line or event when the response did not end with a
// line break, or the whole response when it is one /v1 object.
func (a *Aggregator) flush() {
	if a.object {
		v, err := a.parseObject(a.pending)
		if err == nil {
			err = a.v1Value(v, "message")
		}
		if err == nil && a.finishReason == "" {
			err = fmt.Errorf("%w: no finish_reason", ErrInvalidResponse)
		}
		a.done = err == nil
		a.setErr(err)
		return
	}
	if len(bytes.TrimSpace(a.pending)) > 0 {
		a.line(a.pending)
	}
	a.pending = nil
	if a.route.isV1() && a.err == nil {
		a.setErr(a.dispatchEvent())
	}
}

func (a *Aggregator) result() *response {
	ans := &response{
		Text:           string(a.text),
		Thinking:       string(a.thinking),
		ToolCalls:      a.toolCalls,
		Logprobs:       a.logprobs,
		ChoiceLogprobs: a.choiceLogprobs.encode(),
		Final:          a.final,
		FinishReason:   a.finishReason,
		Usage:          a.usage,
		Fingerprint:    a.fingerprint,
	}
	for _, c := range a.v1Calls {
		ans.ToolCalls = append(ans.ToolCalls, c.encode())
	}
	return ans
}
