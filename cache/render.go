package cache

import (
	"encoding/json"
	"math/rand/v2"
	"strconv"
	"time"
)

// Content types of Ollama's responses, as a real server sends them.
const (
	contentTypeJSONUTF8 = "application/json; charset=utf-8" // /api objects
	contentTypeNDJSON   = "application/x-ndjson"            // /api streams
	contentTypeJSON     = "application/json"                // /v1 objects
	contentTypeSSE      = "text/event-stream"               // /v1 streams
)

// Render returns the response in the form the request of plan p expects,
// with its content type. That is one JSON object, or when p.Stream is set,
// an NDJSON stream ending in a line with done true (/api) or SSE events
// ending in data: [DONE] (/v1). A /v1 stream has a usage chunk when
// p.IncludeUsage is set and the usage is known. The model is named as the
// client of p named it, and created_at or created is the time of the call.
// p must be the plan of the request being served, whose route is the
// entry's route because the route is part of every key.
func (e *Entry) Render(p Plan) (body []byte, contentType string) {
	if e.embed != nil {
		return e.embed.render(e.route, p.requestModel)
	}
	now := time.Now()
	switch e.route {
	case routeGenerate, routeChat:
		return e.response.renderOllama(e.route, p, now)
	default:
		return e.response.renderV1(e.route, p, now)
	}
}

// renderOllama writes an /api response. A stream has a line with the whole
// text, when there is any, and the final line with done true.
func (rs *response) renderOllama(r route, p Plan, now time.Time) ([]byte, string) {
	line := ollamaLine{
		route:   r,
		model:   p.requestModel,
		created: now.UTC().Format(time.RFC3339Nano),
	}
	out := make([]byte, 0, rs.size()+256)
	if !p.Stream {
		line.withText, line.done = true, true
		return rs.appendOllamaLine(out, line), contentTypeJSONUTF8
	}
	if rs.Text != "" || rs.Thinking != "" || len(rs.ToolCalls) > 0 || len(rs.Logprobs) > 0 {
		line.withText, line.done = true, false
		out = append(rs.appendOllamaLine(out, line), '\n')
	}
	line.withText, line.done = false, true
	return append(rs.appendOllamaLine(out, line), '\n'), contentTypeNDJSON
}

// ollamaLine selects the parts of the response that one /api object carries.
type ollamaLine struct {
	route          route
	model, created string
	withText       bool // the text, thinking, tool calls and logprobs
	done           bool // done true and the final members, or done false
}

// appendOllamaLine writes one /api object.
func (rs *response) appendOllamaLine(out []byte, line ollamaLine) []byte {
	var text, thinking string
	var calls, logprobs []json.RawMessage
	if line.withText {
		text, thinking, calls, logprobs = rs.Text, rs.Thinking, rs.ToolCalls, rs.Logprobs
	}

	out = append(out, `{"model":`...)
	out = appendString(out, line.model)
	out = append(out, `,"created_at":"`...)
	out = append(out, line.created...)
	out = append(out, '"')
	if line.route == routeGenerate {
		out = append(out, `,"response":`...)
		out = appendString(out, text)
		out = appendOptionalString(out, "thinking", thinking)
	} else {
		out = append(out, `,"message":{"role":"assistant","content":`...)
		out = appendString(out, text)
		out = appendOptionalString(out, "thinking", thinking)
		out = appendRawArray(out, "tool_calls", calls)
		out = append(out, '}')
	}

	out = append(out, `,"done":`...)
	out = strconv.AppendBool(out, line.done)
	if line.done && len(rs.Final) > 2 {
		out = append(out, ',')
		out = append(out, rs.Final[1:len(rs.Final)-1]...)
	}
	// GenerateResponse has its tool_calls after the metrics.
	if line.route == routeGenerate {
		out = appendRawArray(out, "tool_calls", calls)
	}
	out = appendRawArray(out, "logprobs", logprobs)
	return append(out, '}')
}

// renderV1 writes a /v1 response. A stream has a chunk with the whole text,
// a chunk with the finish reason, an optional usage chunk and [DONE]. The
// text chunk carries all of choices[0].logprobs. A client joins the
// logprobs.content arrays of the chunks in order, as it joins their text,
// so it reads the same entries as from Ollama's stream, which sends the
// entries of each token in the chunk that carries the token. The entries
// are not split over several chunks because Ollama v0.17.4
// (server/routes.go) also sends entries in chunks without content, for
// thinking tokens and for tokens that become a tool call, so they cannot
// be matched to pieces of the text.
func (rs *response) renderV1(r route, p Plan, now time.Time) ([]byte, string) {
	h := v1Header{
		route:       r,
		model:       p.requestModel,
		created:     now.Unix(),
		fingerprint: rs.Fingerprint,
	}
	// Ollama 0.17 (middleware/openai.go) numbers its ids the same way, with
	// a random number below 999.
	h.id = "chatcmpl-"
	if r == routeV1Completions {
		h.id = "cmpl-"
	}
	h.id += strconv.Itoa(rand.IntN(999))

	out := make([]byte, 0, rs.size()+512)
	if !p.Stream {
		out = h.appendStart(out, false)
		out = rs.appendV1Choice(out, r, true, false)
		// Lookup does not return a response without usage for this
		// request (see response.serves).
		if len(rs.Usage) > 0 {
			out = append(out, `,"usage":`...)
			out = append(out, rs.Usage...)
		}
		return h.appendEnd(out, false), contentTypeJSON
	}

	out = appendEvent(out, func(out []byte) []byte {
		return h.appendEnd(rs.appendV1Choice(h.appendStart(out, true), r, true, true), true)
	})
	out = appendEvent(out, func(out []byte) []byte {
		return h.appendEnd(rs.appendV1Choice(h.appendStart(out, true), r, false, true), true)
	})
	if p.IncludeUsage && len(rs.Usage) > 0 {
		out = appendEvent(out, func(out []byte) []byte {
			out = append(h.appendStart(out, true), `,"choices":[],"usage":`...)
			return h.appendEnd(append(out, rs.Usage...), true)
		})
	}
	return append(out, "data: [DONE]\n\n"...), contentTypeSSE
}

func appendEvent(out []byte, write func([]byte) []byte) []byte {
	out = append(out, "data: "...)
	return append(write(out), "\n\n"...)
}

// v1Header contains the members that every /v1 object and chunk repeats.
type v1Header struct {
	route       route
	id, model   string
	created     int64
	fingerprint string
}

// appendStart opens an object with id, object and created, and with model
// and system_fingerprint too except in a /v1/completions chunk, where
// Ollama writes them last.
func (h v1Header) appendStart(out []byte, chunk bool) []byte {
	object := "chat.completion"
	switch {
	case h.route == routeV1Completions:
		object = "text_completion"
	case chunk:
		object = "chat.completion.chunk"
	}
	out = append(out, `{"id":`...)
	out = appendString(out, h.id)
	out = append(out, `,"object":"`...)
	out = append(out, object...)
	out = append(out, `","created":`...)
	out = strconv.AppendInt(out, h.created, 10)
	if chunk && h.route == routeV1Completions {
		return out
	}
	return h.appendModel(out)
}

func (h v1Header) appendEnd(out []byte, chunk bool) []byte {
	if chunk && h.route == routeV1Completions {
		out = h.appendModel(out)
	}
	return append(out, '}')
}

func (h v1Header) appendModel(out []byte) []byte {
	out = append(out, `,"model":`...)
	out = appendString(out, h.model)
	return appendOptionalString(out, "system_fingerprint", h.fingerprint)
}

// appendV1Choice writes the choices member: with the text and the logprobs
// when withText is set, with the finish reason when it is not or when the
// response is one object.
func (rs *response) appendV1Choice(out []byte, r route, withText, chunk bool) []byte {
	var text string
	if withText {
		text = rs.Text
	}
	if r == routeV1Completions {
		out = append(out, `,"choices":[{"text":`...)
		out = appendString(out, text)
		out = append(out, `,"index":0`...)
	} else {
		part := "message"
		if chunk {
			part = "delta"
		}
		out = append(out, `,"choices":[{"index":0,"`...)
		out = append(out, part...)
		out = append(out, `":{"role":"assistant","content":`...)
		out = appendString(out, text)
		if withText {
			out = appendOptionalString(out, "reasoning", rs.Thinking)
			out = appendRawArray(out, "tool_calls", rs.ToolCalls)
		}
		out = append(out, '}')
	}
	out = append(out, `,"finish_reason":`...)
	if chunk && withText {
		out = append(out, "null"...)
	} else {
		out = appendString(out, rs.FinishReason)
	}
	if withText && len(rs.ChoiceLogprobs) > 0 {
		out = append(out, `,"logprobs":`...)
		out = append(out, rs.ChoiceLogprobs...)
	}
	return append(out, "}]"...)
}

// appendOptionalString appends ,"name":s unless s is empty.
func appendOptionalString(out []byte, name, s string) []byte {
	if s == "" {
		return out
	}
	out = append(out, ',', '"')
	out = append(out, name...)
	out = append(out, '"', ':')
	return appendString(out, s)
}

// appendRawArray appends ,"name":[...] unless elems is empty.
func appendRawArray(out []byte, name string, elems []json.RawMessage) []byte {
	if len(elems) == 0 {
		return out
	}
	out = append(out, ',', '"')
	out = append(out, name...)
	out = append(out, `":[`...)
	for i, e := range elems {
		if i > 0 {
			out = append(out, ',')
		}
		out = append(out, e...)
	}
	return append(out, ']')
}
