package proxy

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/ollama/ollama/anthropic"
	"github.com/ollama/ollama/api"
	"github.com/ollama/ollama/openai"
	"github.com/ollama/ollama/types/model"
	"github.com/valyala/fasthttp"
)

// This file builds the errors that the proxy sends in place of a node:
// for a body that Ollama would reject, and for a model that no node has.
// It decodes the body with Ollama's own request types and conversions,
// from the module github.com/ollama/ollama at the version the proxy
// follows (v0.17.4), so that the messages are Go's and Ollama's own, such
// as "json: cannot unmarshal array into Go value of type
// api.GenerateRequest". It runs only on those error paths, never for a
// request that a node serves.

// ollamaError is an error response that Ollama would send.
type ollamaError struct {
	status int
	msg    string
	// early marks an error of Ollama's /v1 middleware, raised before its
	// handler runs (see writeEarlyError).
	early bool
}

func (e ollamaError) write(ctx *fasthttp.RequestCtx, rt route) {
	if e.early {
		writeEarlyError(ctx, rt, e.status, e.msg)
		return
	}
	writeError(ctx, rt, e.status, e.msg)
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
		if e, failed := precheck(rt, body); failed {
			e.write(ctx, rt)
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
// gets that error first (precheck). Then the name itself is checked as
// the route's handler checks it (lookupError).
//
// NOTE: a name that an alias of Ollama's /api/experimental/aliases maps
// to an existing model, on a node that does not list the alias as a
// model, gets the 404 here, where that node would resolve it.
func writeModelNotFound(ctx *fasthttp.RequestCtx, rt route, body []byte, model string) {
	e, failed := precheck(rt, body)
	if !failed {
		e = lookupError(rt, model)
	}
	e.write(ctx, rt)
}

// precheck runs the checks that Ollama's handler for rt, and its /v1
// middleware, make on body before they look the model up. It returns the
// error of the first check that fails.
func precheck(rt route, body []byte) (ollamaError, bool) {
	switch rt.name {
	case "/api/generate":
		var req api.GenerateRequest
		if err := decodeJSON(body, &req); err != nil {
			return badRequest(err.Error(), false), true
		}
		return checkTopLogprobs(req.TopLogprobs)
	case "/api/chat":
		var req api.ChatRequest
		if err := decodeJSON(body, &req); err != nil {
			return badRequest(err.Error(), false), true
		}
		return checkTopLogprobs(req.TopLogprobs)
	case "/api/embed":
		var req api.EmbedRequest
		if err := decodeJSON(body, &req); err != nil {
			return badRequest(err.Error(), false), true
		}
		return checkEmbedInput(req.Input)
	case "/api/copy":
		var req api.CopyRequest
		if err := decodeJSON(body, &req); err != nil {
			return badRequest(err.Error(), false), true
		}
		// CopyHandler checks both names before it looks the source up.
		if !model.ParseName(req.Source).IsValid() {
			return badRequest(fmt.Sprintf("source %q is invalid", req.Source), false), true
		}
		if !model.ParseName(req.Destination).IsValid() {
			return badRequest(fmt.Sprintf("destination %q is invalid", req.Destination), false), true
		}
		return ollamaError{}, false
	case "/v1/chat/completions":
		return precheckOpenAIChat(body)
	case "/v1/completions":
		var req openai.CompletionRequest
		if err := decodeJSON(body, &req); err != nil {
			return badRequest(err.Error(), true), true
		}
		gen, err := openai.FromCompleteRequest(req)
		if err != nil {
			return badRequest(err.Error(), true), true
		}
		return checkTopLogprobs(gen.TopLogprobs)
	case "/v1/embeddings":
		return precheckOpenAIEmbed(body)
	case "/v1/responses":
		var req openai.ResponsesRequest
		if err := decodeJSON(body, &req); err != nil {
			return badRequest(err.Error(), true), true
		}
		chat, err := openai.FromResponsesRequest(req)
		if err != nil {
			return badRequest(err.Error(), true), true
		}
		return checkTopLogprobs(chat.TopLogprobs)
	case "/v1/messages":
		return precheckMessages(body)
	}
	if v := requestValue(rt); v != nil {
		if err := decodeJSON(body, v); err != nil {
			return badRequest(err.Error(), false), true
		}
	}
	return ollamaError{}, false
}

// requestValue returns a new value of the request type that Ollama's
// handler for rt decodes, for the routes whose only check before the
// lookup is the decoding. It returns nil for any other route.
func requestValue(rt route) any {
	switch rt.name {
	case "/api/embeddings":
		return &api.EmbeddingRequest{}
	case "/api/show":
		return &api.ShowRequest{}
	case "/api/delete":
		return &api.DeleteRequest{}
	case "/api/pull":
		return &api.PullRequest{}
	case "/api/push":
		return &api.PushRequest{}
	case "/api/create":
		return &api.CreateRequest{}
	}
	return nil
}

// precheckOpenAIChat follows ChatMiddleware (middleware/openai.go), then
// ChatHandler.
func precheckOpenAIChat(body []byte) (ollamaError, bool) {
	var req openai.ChatCompletionRequest
	if err := decodeJSON(body, &req); err != nil {
		return badRequest(err.Error(), true), true
	}
	if len(req.Messages) == 0 {
		return badRequest("[] is too short - 'messages'", true), true
	}
	chat, err := openai.FromChatRequest(req)
	if err != nil {
		return badRequest(err.Error(), true), true
	}
	return checkTopLogprobs(chat.TopLogprobs)
}

// precheckOpenAIEmbed follows EmbeddingsMiddleware (middleware/openai.go),
// then EmbedHandler.
func precheckOpenAIEmbed(body []byte) (ollamaError, bool) {
	var req openai.EmbedRequest
	if err := decodeJSON(body, &req); err != nil {
		return badRequest(err.Error(), true), true
	}
	if req.EncodingFormat != "" && !strings.EqualFold(req.EncodingFormat, "float") &&
		!strings.EqualFold(req.EncodingFormat, "base64") {
		return badRequest(fmt.Sprintf("Invalid value for 'encoding_format' = %s. "+
			"Supported values: ['float', 'base64'].", req.EncodingFormat), true), true
	}
	if req.Input == "" {
		req.Input = []any{""}
	}
	if items, ok := req.Input.([]any); req.Input == nil || (ok && len(items) == 0) {
		return badRequest("invalid input", true), true
	}
	return checkEmbedInput(req.Input)
}

// precheckMessages follows AnthropicMessagesMiddleware
// (middleware/anthropic.go), then ChatHandler.
func precheckMessages(body []byte) (ollamaError, bool) {
	var req anthropic.MessagesRequest
	if err := decodeJSON(body, &req); err != nil {
		return badRequest(err.Error(), true), true
	}
	switch {
	case req.Model == "":
		return badRequest("model is required", true), true
	case req.MaxTokens <= 0:
		return badRequest("max_tokens is required and must be positive", true), true
	case len(req.Messages) == 0:
		return badRequest("messages is required", true), true
	}
	chat, err := anthropic.FromMessagesRequest(req)
	if err != nil {
		return badRequest(err.Error(), true), true
	}
	return checkTopLogprobs(chat.TopLogprobs)
}

// decodeJSON decodes body as gin's ShouldBindJSON does for Ollama: the
// first JSON value, with encoding/json, whose messages are Ollama's.
func decodeJSON(body []byte, v any) error {
	return json.NewDecoder(bytes.NewReader(body)).Decode(v)
}

func badRequest(msg string, early bool) ollamaError {
	return ollamaError{status: fasthttp.StatusBadRequest, msg: msg, early: early}
}

// checkTopLogprobs is the first check of GenerateHandler and ChatHandler
// after the body decodes.
func checkTopLogprobs(n int) (ollamaError, bool) {
	if n < 0 || n > 20 {
		return badRequest("top_logprobs must be between 0 and 20", false), true
	}
	return ollamaError{}, false
}

// checkEmbedInput is EmbedHandler's check of its input: a string, an array
// of strings, or nothing.
func checkEmbedInput(input any) (ollamaError, bool) {
	switch i := input.(type) {
	case nil, string:
		return ollamaError{}, false
	case []any:
		for _, v := range i {
			if _, ok := v.(string); !ok {
				return badRequest("invalid input type", false), true
			}
		}
		return ollamaError{}, false
	}
	return badRequest("invalid input type", false), true
}

// lookupError returns the response of Ollama's handler for rt to a request
// for name, a model that it does not have, or to one without a model when
// name is "". Each handler checks the name in its own way first
// (server/routes.go): model.ParseName fills in the default host, namespace
// and tag, and IsValid rejects a name without a model part or with
// characters that no model name has.
func lookupError(rt route, name string) ollamaError {
	valid := model.ParseName(name).IsValid()
	switch rt.name {
	case "/api/chat", "/v1/chat/completions", "/v1/responses", "/v1/messages":
		if !valid {
			return badRequest("model is required", false)
		}
	case "/api/embed", "/v1/embeddings":
		// EmbedHandler passes even an invalid name on to its scheduler,
		// which fails to read a manifest of an unqualified name.
		if n := model.ParseName(model.ParseName(name).String()); !n.IsFullyQualified() {
			return ollamaError{status: fasthttp.StatusInternalServerError,
				msg: model.Unqualified(n).Error()}
		}
		return notFound("model " + quote(name) + " not found, try pulling it first")
	case "/api/embeddings":
		if !valid {
			return badRequest("model is required", false)
		}
		return notFound("model " + quote(name) + " not found, try pulling it first")
	case "/api/show", "/v1/models/{model}":
		switch {
		case name == "":
			return badRequest("model is required", false)
		case !valid:
			return ollamaError{status: fasthttp.StatusInternalServerError,
				msg: model.Unqualified(model.ParseName(name)).Error()}
		}
	case "/api/delete":
		if !valid {
			return badRequest(fmt.Sprintf("name %q is invalid", name), false)
		}
	case "/api/pull":
		if !valid {
			return badRequest("invalid model name", false)
		}
	case "/api/push":
		if name == "" {
			return badRequest("model is required", false)
		}
	case "/api/copy":
		return notFound("model " + quote(name) + " not found")
	}
	// GenerateHandler words an invalid name as a model it does not have.
	return notFound("model '" + name + "' not found")
}

func notFound(msg string) ollamaError {
	return ollamaError{status: fasthttp.StatusNotFound, msg: msg}
}
