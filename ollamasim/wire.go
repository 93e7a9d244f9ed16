package ollamasim

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"time"
)

// Content types as Ollama 0.25 sends them: gin adds a charset to single JSON
// objects on /api routes, the OpenAI compatibility layer does not.
const (
	contentJSON       = "application/json; charset=utf-8"
	contentOpenAIJSON = "application/json"
	contentNDJSON     = "application/x-ndjson"
	contentSSE        = "text/event-stream"
	contentText       = "text/plain; charset=utf-8"
)

// errMissingBody is Ollama's error for a request without a body.
var errMissingBody = errors.New("missing request body")

// decodeBody decodes the JSON request body into v. The error text is what
// Ollama returns: encoding/json's message, or "missing request body".
func decodeBody(r *http.Request, v any) error {
	err := json.NewDecoder(r.Body).Decode(v)
	if errors.Is(err, io.EOF) {
		return errMissingBody
	}
	return err
}

// writeJSON sends v as a single JSON object with the given content type.
func writeJSON(w http.ResponseWriter, status int, contentType string, v any) {
	w.Header().Set("Content-Type", contentType)
	w.WriteHeader(status)
	w.Write(marshalBody(v))
}

// writeJSONLine is writeJSON with a newline after the object, as
// json.Encoder writes it in Ollama's /v1/responses and /v1/messages
// middleware.
func writeJSONLine(w http.ResponseWriter, status int, contentType string, v any) {
	w.Header().Set("Content-Type", contentType)
	w.WriteHeader(status)
	w.Write(append(marshalBody(v), '\n'))
}

// writeJSONChunked is writeJSON with a chunked body whatever its length.
// Go's server sends a short body with a Content-Length, but Ollama's
// /api/show response is long enough to be chunked.
func writeJSONChunked(w http.ResponseWriter, status int, contentType string, v any) {
	w.Header().Set("Content-Type", contentType)
	w.WriteHeader(status)
	// A flush before the body commits the head without a Content-Length.
	http.NewResponseController(w).Flush()
	w.Write(marshalBody(v))
}

// marshalBody encodes v, or an error object when v cannot be encoded.
func marshalBody(v any) []byte {
	body, err := json.Marshal(v)
	if err != nil {
		return fmt.Appendf(nil, `{"error":%q}`, err.Error())
	}
	return body
}

// apiError is the error body of Ollama's native routes.
type apiError struct {
	Error string `json:"error"`
}

func writeAPIError(w http.ResponseWriter, status int, message string) {
	writeJSON(w, status, contentJSON, apiError{Error: message})
}

// openAIError is the error body of the OpenAI-compatible routes.
type openAIError struct {
	Error openAIErrorDetail `json:"error"`
}

type openAIErrorDetail struct {
	Message string  `json:"message"`
	Type    string  `json:"type"`
	Param   *string `json:"param"`
	Code    *string `json:"code"`
}

// writeOpenAIError sends an error in OpenAI's shape, with the error type
// Ollama derives from the status, as an error of Ollama's handler reaches
// the client through its /v1 middleware: written with json.Encoder, so
// with a newline after the object, and with Content-Type
// application/json.
func writeOpenAIError(w http.ResponseWriter, status int, message string) {
	kind := "api_error"
	switch status {
	case http.StatusBadRequest:
		kind = "invalid_request_error"
	case http.StatusNotFound:
		kind = "not_found_error"
	}
	body := openAIError{Error: openAIErrorDetail{Message: message, Type: kind}}
	writeJSONLine(w, status, contentOpenAIJSON, body)
}

// anthropicError is the error body of /v1/messages, Ollama's
// anthropic.ErrorResponse.
type anthropicError struct {
	Type      string               `json:"type"`
	Error     anthropicErrorDetail `json:"error"`
	RequestID string               `json:"request_id"`
}

type anthropicErrorDetail struct {
	Type    string `json:"type"`
	Message string `json:"message"`
}

// writeAnthropicError sends an error in Anthropic's shape, with the error
// type and the random request_id that Ollama's anthropic.NewError gives it.
func writeAnthropicError(w http.ResponseWriter, status int, message string) {
	kind := "api_error"
	switch status {
	case http.StatusBadRequest:
		kind = "invalid_request_error"
	case http.StatusUnauthorized:
		kind = "authentication_error"
	case http.StatusForbidden:
		kind = "permission_error"
	case http.StatusNotFound:
		kind = "not_found_error"
	case http.StatusTooManyRequests:
		kind = "rate_limit_error"
	case http.StatusServiceUnavailable, 529:
		kind = "overloaded_error"
	}
	body := anthropicError{
		Type:      "error",
		Error:     anthropicErrorDetail{Type: kind, Message: message},
		RequestID: "req_" + randomHex(),
	}
	writeJSONLine(w, status, contentOpenAIJSON, body)
}

// randomHex returns 24 random hexadecimal digits, the length of the ids
// that Ollama's anthropic package makes from 12 random bytes.
func randomHex() string {
	return fmt.Sprintf("%016x%08x", rand.Uint64(), rand.Uint32())
}

// writeEarlyError sends an error that Ollama's /v1 middleware raises itself
// before the handler runs, such as a body that does not decode: gin's
// AbortWithStatusJSON writes it with json.Marshal, so without a newline,
// and with a charset in its Content-Type.
func writeEarlyError(w http.ResponseWriter, shape errorShape, status int, message string) {
	rec := &bodyRecorder{header: http.Header{}}
	writeError(rec, shape, status, message)
	w.Header().Set("Content-Type", contentJSON)
	w.WriteHeader(status)
	w.Write(bytes.TrimSuffix(rec.body.Bytes(), []byte("\n")))
}

// bodyRecorder keeps what an error writer writes.
type bodyRecorder struct {
	header http.Header
	body   bytes.Buffer
}

func (b *bodyRecorder) Header() http.Header         { return b.header }
func (b *bodyRecorder) Write(p []byte) (int, error) { return b.body.Write(p) }
func (b *bodyRecorder) WriteHeader(int)             {}

// errorShape is the error body of a route family.
type errorShape uint8

const (
	shapeOllama    errorShape = iota // {"error":"..."} on /api
	shapeOpenAI                      // OpenAI's error object on /v1
	shapeAnthropic                   // Anthropic's error object on /v1/messages
)

// writeError sends an error in the given shape.
func writeError(w http.ResponseWriter, shape errorShape, status int, message string) {
	switch shape {
	case shapeOpenAI:
		writeOpenAIError(w, status, message)
	case shapeAnthropic:
		writeAnthropicError(w, status, message)
	default:
		writeAPIError(w, status, message)
	}
}

// timestamp formats t as Ollama's created_at, expires_at and modified_at.
func timestamp(t time.Time) string {
	return t.UTC().Format(time.RFC3339Nano)
}

// frameWriter writes a streamed response: NDJSON (one object per line) or
// server-sent events (one "data:" event per object), flushing after every
// frame as Ollama does.
type frameWriter struct {
	w      http.ResponseWriter
	rc     *http.ResponseController
	sse    bool
	frames int
	cut    func(frames int) bool // reports whether the stream must be cut now
}

func newFrameWriter(w http.ResponseWriter, sse bool, cut func(int) bool) *frameWriter {
	contentType := contentNDJSON
	if sse {
		contentType = contentSSE
	}
	w.Header().Set("Content-Type", contentType)
	return &frameWriter{w: w, rc: http.NewResponseController(w), sse: sse, cut: cut}
}

// namedEvent is a server-sent event with an "event:" line, as the
// /v1/responses and /v1/messages streams send them.
type namedEvent struct {
	name string
	data any
}

// write sends v as one frame. When the cut fault is due it aborts the
// connection with http.ErrAbortHandler, so the client never sees the end of
// the chunked body.
func (f *frameWriter) write(v any) error {
	var name string
	if e, ok := v.(namedEvent); ok {
		name, v = e.name, e.data
	}
	body, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("encode frame: %w", err)
	}
	if err := f.writeRaw(name, body); err != nil {
		return err
	}
	f.frames++
	if f.cut != nil && f.cut(f.frames) {
		panic(http.ErrAbortHandler)
	}
	return nil
}

func (f *frameWriter) writeRaw(name string, body []byte) error {
	var frame []byte
	if f.sse {
		frame = make([]byte, 0, len(name)+len(body)+16)
		if name != "" {
			frame = append(frame, "event: "...)
			frame = append(frame, name...)
			frame = append(frame, '\n')
		}
		frame = append(frame, "data: "...)
		frame = append(frame, body...)
		frame = append(frame, "\n\n"...)
	} else {
		frame = append(body, '\n')
	}
	if _, err := f.w.Write(frame); err != nil {
		return fmt.Errorf("write frame: %w", err)
	}
	if err := f.rc.Flush(); err != nil {
		return fmt.Errorf("flush frame: %w", err)
	}
	return nil
}

// end finishes an event stream with the "[DONE]" event OpenAI clients wait
// for. NDJSON streams need no terminator.
func (f *frameWriter) end() error {
	if !f.sse {
		return nil
	}
	if _, err := io.WriteString(f.w, "data: [DONE]\n\n"); err != nil {
		return fmt.Errorf("write end of stream: %w", err)
	}
	if err := f.rc.Flush(); err != nil {
		return fmt.Errorf("flush end of stream: %w", err)
	}
	return nil
}
