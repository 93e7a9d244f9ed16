package proxy

import (
	"errors"

	"github.com/valyala/fasthttp"

	"github.com/llmproxy/llmproxy/internal/ollamacheck"
)

// This file sends the errors that the proxy sends in place of a node: for
// a body that Ollama would reject, and for a model that no node has. The
// package ollamacheck builds them with Ollama's own request types, and
// runs only on those error paths, never for a request that a node serves.

// writeOllamaError sends e, an error response that Ollama would send. An
// error of Ollama's /v1 middleware goes out as writeEarlyError writes it.
func writeOllamaError(ctx *fasthttp.RequestCtx, rt route, e ollamacheck.Error) {
	if e.Early {
		writeEarlyError(ctx, rt, e.Status, e.Message)
		return
	}
	writeError(ctx, rt, e.Status, e.Message)
}

// writeBodyError responds to a body from which the proxy could not read
// the fields it needs, with err from parseObject or a field reader. A body
// or field of the wrong JSON type (bodyTypeError) gets the response of
// Ollama's decoder, which rejects it too. So does a body that is not JSON
// at all, with Go's message (see syntaxError). A duplicate key, which
// Ollama accepts, gets the proxy's own words. On the /v1 routes each is an error of Ollama's middleware,
// which decodes the body there.
func writeBodyError(ctx *fasthttp.RequestCtx, rt route, body []byte, err error) {
	var typeErr *bodyTypeError
	if errors.As(err, &typeErr) {
		if e, failed := ollamacheck.Precheck(rt.name, body); failed {
			writeOllamaError(ctx, rt, e)
			return
		}
	}
	writeEarlyError(ctx, rt, fasthttp.StatusBadRequest, err.Error())
}

// writeModelNotFound responds to a request for model, which no node has,
// or to a request that names no model when model is "". Ollama checks
// some fields before it looks the model up, such as the body's types,
// top_logprobs on generate and chat, the input of an embedding and the
// messages of /v1/chat/completions, so a body that fails one of those
// gets that error first (ollamacheck.Precheck). Then the name itself is
// checked as the route's handler checks it (ollamacheck.LookupError).
//
// NOTE: a name that an alias of Ollama's /api/experimental/aliases maps
// to an existing model, on a node that does not list the alias as a
// model, gets the 404 here, where that node would resolve it.
func writeModelNotFound(ctx *fasthttp.RequestCtx, rt route, body []byte, model string) {
	e, failed := ollamacheck.Precheck(rt.name, body)
	if !failed {
		e = ollamacheck.LookupError(rt.name, model)
	}
	writeOllamaError(ctx, rt, e)
}
