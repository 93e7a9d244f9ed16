package proxy

import (
	"bytes"
	"context"
	"errors"
	"net"
	"net/http"
	"strings"
	"unicode/utf8"

	"github.com/valyala/fasthttp"
	"github.com/valyala/fastjson"

	"github.com/llmproxy/llmproxy/balancer"
	"github.com/llmproxy/llmproxy/internal/wire"
)

// clientText returns the message of err for a client. A socket error
// names the proxy's and the node's addresses (dial tcp 10.0.0.5:11434:
// connect: connection refused), which stay in the log: the client gets
// the cause alone (connection refused). A response head that failed to
// read gets its kind alone (invalid response head), without the bytes
// that fasthttp's message quotes.
func clientText(err error) string {
	if err == nil {
		return ""
	}
	msg := err.Error()
	var head *headReadError
	if errors.As(err, &head) {
		return strings.Replace(msg, head.Error(), head.kind, 1)
	}
	var op *net.OpError
	if !errors.As(err, &op) || op.Err == nil {
		return msg
	}
	cause := op.Err
	for next := errors.Unwrap(cause); next != nil; next = errors.Unwrap(cause) {
		cause = next
	}
	return strings.Replace(msg, op.Error(), cause.Error(), 1)
}

// StatusClientClosed is the status logged and counted for a request whose
// client went away before the response was complete (nginx's 499). It is
// never sent, because the client is no longer connected.
const StatusClientClosed = 499

// writeError sends an error in the shape the route's clients parse:
// {"error":"..."} on Ollama routes, OpenAI's error object on the OpenAI
// routes, and Anthropic's error object on /v1/messages. On the /v1 routes
// it has the form of an error that reaches Ollama's compatibility
// middleware from its handler, such as a model not found: the middleware
// rewrites it with json.Encoder and Content-Type application/json
// (writeError in middleware/openai.go and middleware/anthropic.go of
// Ollama v0.17.4), so the body ends with a newline. The proxy's own errors
// on these routes, such as 429 or 503, take the same form.
func writeError(ctx *fasthttp.RequestCtx, r route, status int, msg string) {
	writeErrorBody(ctx, r, status, msg, false)
}

// writeEarlyError sends an error that Ollama's /v1 middleware raises
// itself before its handler runs, such as a body that does not decode:
// gin's AbortWithStatusJSON writes it with json.Marshal, so the body has
// no newline, and with Content-Type application/json; charset=utf-8. On
// Ollama's own routes it is writeError.
func writeEarlyError(ctx *fasthttp.RequestCtx, r route, status int, msg string) {
	writeErrorBody(ctx, r, status, msg, true)
}

func writeErrorBody(ctx *fasthttp.RequestCtx, r route, status int, msg string, early bool) {
	ctx.Response.ResetBody()
	ctx.SetStatusCode(status)
	var body []byte
	switch r.family {
	case apiOpenAI:
		body = wire.OpenAIError(msg, wire.OpenAIErrorType(status))
	case apiAnthropic:
		body = wire.AnthropicError(msg, wire.AnthropicErrorType(status), anthropicRequestID(ctx))
	default:
		ctx.SetContentType(jsonUTF8)
		if status == fasthttp.StatusUnauthorized {
			ctx.SetBody(wire.OllamaAuthError(msg))
			return
		}
		ctx.SetBody(wire.OllamaError(msg))
		return
	}
	if early {
		ctx.SetContentType(jsonUTF8)
		ctx.SetBody(body)
		return
	}
	ctx.SetContentType("application/json")
	ctx.SetBody(append(body, '\n'))
}

// jsonUTF8 is the Content-Type of gin's c.JSON, which Ollama's handlers
// use for every single JSON object they send.
const jsonUTF8 = "application/json; charset=utf-8"

// anthropicRequestID returns the request_id of an Anthropic error body:
// the X-Request-Id that the proxy has set on the response, with the "req_"
// prefix of Ollama's ids unless it has one. It returns "" before the
// request has an id, and the body then has no request_id.
func anthropicRequestID(ctx *fasthttp.RequestCtx) string {
	id := ctx.Response.Header.PeekBytes(headerRequestID)
	if len(id) == 0 {
		return ""
	}
	if bytes.HasPrefix(id, []byte("req_")) {
		return string(id)
	}
	return "req_" + string(id)
}

// maxLoggedError bounds the error message that bodyErrorMessage returns.
const maxLoggedError = 512

// bodyErrorMessage returns the message of an error response: the message
// of any route shape, {"error":"..."} or {"error":{"message":"..."}},
// or a short plain-text body such as "404 page not found". It returns ""
// for any other body, and does not read a streamed one.
func bodyErrorMessage(resp *fasthttp.Response) string {
	if resp.IsBodyStream() {
		return ""
	}
	body := resp.Body()
	var msg []byte
	if len(body) > 0 && body[0] == '{' {
		var parser fastjson.Parser
		doc, err := parser.ParseBytes(body)
		if err != nil {
			return ""
		}
		msg = doc.GetStringBytes("error")
		if msg == nil {
			msg = doc.GetStringBytes("error", "message")
		}
	} else if bytes.HasPrefix(resp.Header.ContentType(), []byte("text/plain")) && len(body) <= maxLoggedError {
		msg = bytes.TrimSpace(body)
	}
	if len(msg) > maxLoggedError {
		n := maxLoggedError
		for n > 0 && !utf8.RuneStart(msg[n]) {
			n--
		}
		msg = msg[:n]
	}
	if !utf8.Valid(msg) {
		return ""
	}
	return string(msg)
}

// statusFor maps an error of the routing pipeline to the status the client
// receives. It is the one place where that mapping is made.
func statusFor(err error) int {
	switch {
	case errors.Is(err, errClientGone):
		return StatusClientClosed
	case errors.Is(err, balancer.ErrModelNotFound):
		return http.StatusNotFound
	case errors.Is(err, balancer.ErrNoNode), errors.Is(err, errShuttingDown),
		errors.Is(err, errConnect), errors.Is(err, errNodeMarkedDown):
		// A node that rejects connections, or that health checks marked
		// down while it had the request, gets 503 like a node that was
		// down before the request arrived.
		return http.StatusServiceUnavailable
	case errors.Is(err, errFirstByteTimeout), errors.Is(err, context.DeadlineExceeded),
		errors.Is(err, errIdleTimeout):
		return http.StatusGatewayTimeout
	default:
		return http.StatusBadGateway
	}
}

// maxNodeErrorText is the longest plain-text error body of a node that
// nodeErrorMessage quotes.
const maxNodeErrorText = 256

// nodeErrorMessage reports whether a node's error body has the shape that
// rt's clients parse (relay), and otherwise returns the message to send in
// that shape. A body without a message, such as an HTML page, gets one
// that names the status. A 4xx on a fallback route is always relayed,
// because the proxy has no record of the shape of that route's errors,
// and the node's 404 for a path it does not serve is what Ollama sends.
func nodeErrorMessage(rt route, status int, body []byte) (relay bool, msg string) {
	if rt.how == handleFallback && status < 500 {
		return true, ""
	}
	fallback := "node returned status " + itoa(status)
	var parser fastjson.Parser
	doc, err := parser.ParseBytes(body)
	if err != nil {
		text := bytes.TrimSpace(body)
		if len(text) == 0 || len(text) > maxNodeErrorText || text[0] == '<' || !utf8.Valid(text) {
			return false, fallback
		}
		return false, fallback + ": " + string(text)
	}
	errField := doc.Get("error")
	if errField == nil {
		return false, fallback
	}
	switch errField.Type() {
	case fastjson.TypeString:
		// Ollama's shape.
		if rt.family == apiOllama {
			return true, ""
		}
		return false, string(errField.GetStringBytes())
	case fastjson.TypeObject:
		// OpenAI's or Anthropic's shape.
		message := errField.Get("message")
		if message == nil || message.Type() != fastjson.TypeString {
			return false, fallback
		}
		if rt.family == apiOpenAI || (rt.family == apiAnthropic && isAnthropicError(doc)) {
			return true, ""
		}
		return false, string(message.GetStringBytes())
	}
	return false, fallback
}

// isAnthropicError reports whether doc has the shape of an Anthropic error
// body, {"type":"error","error":{"type":"...","message":"..."}}. OpenAI's
// shape lacks the top-level type.
func isAnthropicError(doc *fastjson.Value) bool {
	if string(doc.GetStringBytes("type")) != "error" {
		return false
	}
	typ := doc.Get("error", "type")
	return typ != nil && typ.Type() == fastjson.TypeString
}
