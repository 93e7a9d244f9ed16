package proxy

import (
	"context"
	"errors"
	"net/http"

	"github.com/valyala/fasthttp"

	"github.com/llmproxy/llmproxy/balancer"
	"github.com/llmproxy/llmproxy/internal/wire"
)

// StatusClientClosed is the status logged and counted for a request whose
// client went away before the response was complete (nginx's 499). It is
// never sent, because the client is no longer connected.
const StatusClientClosed = 499

// writeError sends an error in the shape the route's clients parse:
// {"error":"..."} on Ollama routes, OpenAI's error object on /v1.
func writeError(ctx *fasthttp.RequestCtx, r route, status int, msg string) {
	ctx.Response.ResetBody()
	ctx.SetStatusCode(status)
	if r.openAI {
		ctx.SetContentType("application/json")
		ctx.SetBody(wire.OpenAIError(msg, wire.OpenAIErrorType(status)))
		return
	}
	ctx.SetContentType("application/json; charset=utf-8")
	ctx.SetBody(wire.OllamaError(msg))
}

// statusFor maps an error of the routing pipeline to the status the client
// receives. It is the one place where that mapping is made.
func statusFor(err error) int {
	switch {
	case errors.Is(err, errClientGone):
		return StatusClientClosed
	case errors.Is(err, balancer.ErrModelNotFound):
		return http.StatusNotFound
	case errors.Is(err, balancer.ErrNoNode), errors.Is(err, errShuttingDown):
		return http.StatusServiceUnavailable
	case errors.Is(err, errFirstByteTimeout), errors.Is(err, context.DeadlineExceeded),
		errors.Is(err, errIdleTimeout):
		return http.StatusGatewayTimeout
	default:
		return http.StatusBadGateway
	}
}
