package main

import (
	"encoding/json"
	"math/rand/v2"
	"net/http"
	"strconv"
	"time"

	"github.com/llmproxy/llmproxy/ollamasim"
)

// stream is one lean streamed response. Once started, it belongs to the
// pacer until it ends.
type stream struct {
	conn       *conn
	route      string
	modelKey   string
	openAI     bool
	usage      bool // send OpenAI's usage event before [DONE]
	chunked    bool // HTTP/1.1 chunked body; an HTTP/1.0 body ends with the connection
	closeAfter bool // the connection closes after the response

	// head is the JSON that starts every frame: up to the created_at value
	// in NDJSON, and from "id" to the choices array in SSE, after sent_at.
	head       []byte
	pieces     []string // the generated text, one token each
	numPredict int      // zero or negative means no limit
	evalCount  int
	prompt     int // prompt_eval_count
	sentHeader bool

	received   time.Time     // when the request was read
	promptTime time.Duration // prompt evaluation, before the first token
	admitted   time.Time     // when the stream got a slot
	genStart   time.Time     // when generation started, after prompt evaluation
	interval   time.Duration // one token time
	due        time.Time     // when the next chunk is due
}

func newStream(c *conn, req *http.Request, lr leanRequest, received time.Time,
	tokens *ollamasim.TokenStream) *stream {
	// Drawing the text at once keeps the generator's state out of the
	// pacer's path.
	pieces := make([]string, 0, 48)
	for {
		piece, last := tokens.Next()
		pieces = append(pieces, piece)
		if last {
			break
		}
	}
	chunked := req.ProtoAtLeast(1, 1)
	st := &stream{
		conn:       c,
		route:      lr.route,
		modelKey:   lr.modelKey,
		openAI:     lr.openAI,
		usage:      lr.includeUsage,
		chunked:    chunked,
		closeAfter: req.Close || !chunked,
		pieces:     pieces,
		numPredict: lr.numPredict,
		prompt:     lr.promptTokens,
		received:   received,
	}
	// json.Marshal escapes the model name as ollamasim's encoder does.
	model, _ := json.Marshal(lr.model)
	if lr.openAI {
		st.head = openAIHead(model, received)
	} else {
		st.head = append(append([]byte(`{"model":`), model...), `,"created_at":"`...)
	}
	return st
}

// openAIHead returns the fields that every chunk of an OpenAI stream
// shares, from "id" to the opening of "choices". The id is a random number
// below 1000, as ollamasim and Ollama 0.25 make it.
func openAIHead(model []byte, created time.Time) []byte {
	b := []byte(`"id":"chatcmpl-`)
	b = strconv.AppendInt(b, int64(rand.IntN(1000)), 10)
	b = append(b, `","object":"chat.completion.chunk","created":`...)
	b = strconv.AppendInt(b, created.Unix(), 10)
	b = append(b, `,"model":`...)
	b = append(b, model...)
	return append(b, `,"system_fingerprint":"fp_ollama","choices":[`...)
}

// start gives the stream its slot at now: the prompt evaluates, and the
// first token is due one token time later. Like ollamasim, it measures the
// evaluation when it is not paced, so prompt_eval_duration is not zero.
func (st *stream) start(now time.Time, interval time.Duration) {
	st.admitted = now
	st.genStart = time.Now().Add(st.promptTime)
	st.interval = interval
	st.due = st.genStart.Add(interval)
}

// appendResponse appends what the stream writes for its next token at
// now: the response header before the first token, the token's frame, and
// after the last token the final frames and the end of the body. It
// reports whether the stream has ended.
func (st *stream) appendResponse(b, frame []byte, now time.Time) (out, frameBuf []byte, ended bool) {
	if !st.sentHeader {
		b = st.appendHeader(b, now)
		st.sentHeader = true
	}
	piece := st.pieces[st.evalCount]
	st.evalCount++
	last := st.evalCount == len(st.pieces)
	reason := ""
	switch {
	case last:
		reason = "stop"
	case st.numPredict > 0 && st.evalCount >= st.numPredict:
		reason = "length"
	}

	frame = st.appendTokenFrame(frame[:0], now, piece)
	b = st.appendChunk(b, frame)
	if reason == "" {
		return b, frame, false
	}
	frame = st.appendFinalFrame(frame[:0], now, reason)
	b = st.appendChunk(b, frame)
	if st.openAI {
		if st.usage {
			frame = st.appendUsageFrame(frame[:0], now)
			b = st.appendChunk(b, frame)
		}
		b = st.appendChunk(b, []byte("data: [DONE]\n\n"))
	}
	if st.chunked {
		b = append(b, "0\r\n\r\n"...)
	}
	return b, frame, true
}

// appendHeader appends the status line and header of a stream as net/http
// writes them for ollamasim: the content type, Date, and for HTTP/1.1
// Connection: close when the request asked for it and chunked encoding.
func (st *stream) appendHeader(b []byte, now time.Time) []byte {
	contentType := "application/x-ndjson"
	if st.openAI {
		contentType = "text/event-stream"
	}
	if st.chunked {
		b = append(b, "HTTP/1.1 200 OK\r\n"...)
	} else {
		b = append(b, "HTTP/1.0 200 OK\r\n"...)
	}
	b = append(b, "Content-Type: "...)
	b = append(b, contentType...)
	b = append(b, "\r\nDate: "...)
	b = now.UTC().AppendFormat(b, http.TimeFormat)
	b = append(b, "\r\n"...)
	if st.chunked {
		if st.closeAfter {
			b = append(b, "Connection: close\r\n"...)
		}
		b = append(b, "Transfer-Encoding: chunked\r\n"...)
	}
	return append(b, "\r\n"...)
}

// appendChunk appends data as one chunk of a chunked body, or as it is
// when the body is not chunked.
func (st *stream) appendChunk(b, data []byte) []byte {
	if !st.chunked {
		return append(b, data...)
	}
	b = strconv.AppendInt(b, int64(len(data)), 16)
	b = append(b, "\r\n"...)
	b = append(b, data...)
	return append(b, "\r\n"...)
}

// appendFrameStart appends the start of a frame up to the point where the
// frames of the stream differ.
func (st *stream) appendFrameStart(b []byte, now time.Time) []byte {
	if st.openAI {
		b = append(b, `data: {"sent_at":"`...)
		b = appendTime(b, now)
		b = append(b, `",`...)
		return append(b, st.head...)
	}
	b = append(b, st.head...)
	b = appendTime(b, now)
	return append(b, `",`...)
}

func (st *stream) appendTokenFrame(b []byte, now time.Time, piece string) []byte {
	b = st.appendFrameStart(b, now)
	if st.openAI {
		b = append(b, `{"index":0,"delta":{"role":"assistant","content":`...)
		b = appendJSONString(b, piece)
		return append(b, "},\"finish_reason\":null}]}\n\n"...)
	}
	b = append(b, `"message":{"role":"assistant","content":`...)
	b = appendJSONString(b, piece)
	return append(b, "},\"done\":false}\n"...)
}

// appendFinalFrame appends the frame that ends the text: OpenAI's chunk
// with finish_reason, or Ollama's final line with its counts and
// durations in nanoseconds.
func (st *stream) appendFinalFrame(b []byte, now time.Time, reason string) []byte {
	b = st.appendFrameStart(b, now)
	if st.openAI {
		b = append(b, `{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":"`...)
		b = append(b, reason...)
		return append(b, "\"}]}\n\n"...)
	}
	b = append(b, `"message":{"role":"assistant","content":""},"done":true,"done_reason":"`...)
	b = append(b, reason...)
	b = append(b, `","total_duration":`...)
	b = strconv.AppendInt(b, int64(now.Sub(st.received)), 10)
	b = append(b, `,"load_duration":`...)
	b = strconv.AppendInt(b, int64(st.admitted.Sub(st.received)), 10)
	b = append(b, `,"prompt_eval_count":`...)
	b = strconv.AppendInt(b, int64(st.prompt), 10)
	b = append(b, `,"prompt_eval_duration":`...)
	b = strconv.AppendInt(b, int64(st.genStart.Sub(st.admitted)), 10)
	b = append(b, `,"eval_count":`...)
	b = strconv.AppendInt(b, int64(st.evalCount), 10)
	b = append(b, `,"eval_duration":`...)
	b = strconv.AppendInt(b, int64(now.Sub(st.genStart)), 10)
	return append(b, "}\n"...)
}

// appendUsageFrame appends OpenAI's usage event: no choices, and the
// token counts.
func (st *stream) appendUsageFrame(b []byte, now time.Time) []byte {
	b = st.appendFrameStart(b, now)
	b = append(b, `],"usage":{"prompt_tokens":`...)
	b = strconv.AppendInt(b, int64(st.prompt), 10)
	b = append(b, `,"completion_tokens":`...)
	b = strconv.AppendInt(b, int64(st.evalCount), 10)
	b = append(b, `,"total_tokens":`...)
	b = strconv.AppendInt(b, int64(st.prompt+st.evalCount), 10)
	return append(b, "}}\n\n"...)
}

// appendTime appends t as Ollama's created_at: RFC 3339 in UTC with
// nanoseconds, trailing zeros dropped.
func appendTime(b []byte, t time.Time) []byte {
	return t.UTC().AppendFormat(b, time.RFC3339Nano)
}

// appendJSONString appends s as a JSON string escaped the way
// encoding/json escapes it, HTML characters included. Plain ASCII, which
// every vocabulary piece is, takes the fast path.
func appendJSONString(b []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < 0x20 || c >= 0x80 || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			quoted, _ := json.Marshal(s)
			return append(b, quoted...)
		}
	}
	b = append(b, '"')
	b = append(b, s...)
	return append(b, '"')
}
