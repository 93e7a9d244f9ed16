package cache

import (
	"encoding/json"
	"errors"
	"fmt"
)

// Entry is a cached response in its one stored form, ready to be rendered
// for a streaming or a non-streaming request. An Entry is immutable and
// safe to share between goroutines.
type Entry struct {
	route    route
	response *response      // generation routes
	embed    *embedResponse // embedding routes
}

// response is the stored form of a generation response: the non-stream form,
// with the text of every streamed chunk joined. Fields are exported only
// for encoding/json, which writes the L2 copy.
type response struct {
	// Text is response (/api/generate), message.content (/api/chat),
	// choices[0].message.content or delta.content (/v1/chat/completions)
	// or choices[0].text (/v1/completions).
	Text string `json:"text"`
	// Thinking is thinking (/api) or reasoning (/v1).
	Thinking string `json:"thinking,omitempty"`
	// ToolCalls contains the tool calls in the route's own JSON form.
	ToolCalls []json.RawMessage `json:"tool_calls,omitempty"`
	// Logprobs joins the logprobs arrays of an /api response.
	Logprobs []json.RawMessage `json:"logprobs,omitempty"`
	// ChoiceLogprobs is choices[0].logprobs of a /v1 response: the object
	// as it came, or from a stream the chunks' objects joined (see
	// choiceLogprobs).
	ChoiceLogprobs json.RawMessage `json:"choice_logprobs,omitempty"`
	// Final is an object holding the members of Ollama's final line other
	// than the ones above and model, created_at and done, in the order
	// received: done_reason, context, the durations and counts.
	Final json.RawMessage `json:"final,omitempty"`
	// FinishReason, Usage and Fingerprint are the /v1 finish_reason, usage
	// object and system_fingerprint. Usage is empty when a stream was
	// stored that did not ask for it.
	FinishReason string          `json:"finish_reason,omitempty"`
	Usage        json.RawMessage `json:"usage,omitempty"`
	Fingerprint  string          `json:"system_fingerprint,omitempty"`
}

func (rs *response) size() int64 {
	n := len(rs.Text) + len(rs.Thinking) + len(rs.ChoiceLogprobs) + len(rs.Final) +
		len(rs.FinishReason) + len(rs.Usage) + len(rs.Fingerprint)
	for _, c := range rs.ToolCalls {
		n += len(c)
	}
	for _, l := range rs.Logprobs {
		n += len(l)
	}
	return int64(n)
}

// record is one cached value as both tiers store it: a whole response or the
// vector of one embedding input with its prompt token count.
type record struct {
	key      string
	model    string // normalized, for Purge
	response *response
	vector   []byte
	tokens   int64 // prompt tokens of the input of vector
	cost     int64 // bytes charged against l1.max_bytes
}

// recordOverheadBytes estimates the memory of a record beyond its payload:
// the key, the struct and the L1 bookkeeping.
const recordOverheadBytes = 160

func newResponseRecord(key, model string, rs *response) *record {
	return &record{key: key, model: model, response: rs,
		cost: rs.size() + int64(len(key)+len(model)) + recordOverheadBytes}
}

func newVectorRecord(key, model string, vector []byte, tokens int64) *record {
	return &record{key: key, model: model, vector: vector, tokens: tokens,
		cost: int64(len(vector)+len(key)+len(model)) + recordOverheadBytes}
}

// envelope is the L2 form of a record.
type envelope struct {
	Version  int             `json:"v"`
	Model    string          `json:"model"`
	Response *response       `json:"response,omitempty"`
	Vector   json.RawMessage `json:"vector,omitempty"`
	Tokens   int64           `json:"tokens,omitempty"`
}

// Each kind of record has its own envelope version, which changes whenever
// its stored form changes, so that instances running different versions
// read each other's records of that kind as misses. Vector records are at
// version 2 because they carry their input's prompt token count, which
// version 1 lacks. Response records are at version 2 because they carry
// the logprobs of /v1 responses, which version 1 dropped.
const (
	responseEnvelopeVersion = 2
	vectorEnvelopeVersion   = 2
)

func encodeRecord(r *record) ([]byte, error) {
	e := envelope{Version: responseEnvelopeVersion, Model: r.model, Response: r.response}
	if r.response == nil {
		e = envelope{Version: vectorEnvelopeVersion, Model: r.model, Vector: r.vector, Tokens: r.tokens}
	}
	b, err := json.Marshal(e)
	if err != nil {
		return nil, fmt.Errorf("encode cache entry: %w", err)
	}
	return b, nil
}

var errStaleEnvelope = errors.New("cache entry of another version")

func decodeRecord(key string, b []byte) (*record, error) {
	var e envelope
	if err := json.Unmarshal(b, &e); err != nil {
		return nil, fmt.Errorf("decode cache entry: %w", err)
	}
	switch {
	case e.Response != nil && e.Version == responseEnvelopeVersion:
		return newResponseRecord(key, e.Model, e.Response), nil
	case len(e.Vector) > 0 && e.Version == vectorEnvelopeVersion:
		return newVectorRecord(key, e.Model, e.Vector, e.Tokens), nil
	case e.Response != nil, len(e.Vector) > 0:
		return nil, errStaleEnvelope
	}
	return nil, fmt.Errorf("decode cache entry: %w", ErrInvalidResponse)
}
