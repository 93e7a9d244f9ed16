// Package ollamacheck builds the errors that Ollama v0.17.4 returns for a
// request body it rejects before it looks a model up, and for a model it
// does not have. It decodes the body with Ollama's own request types and
// conversions, from the module github.com/ollama/ollama, so that the
// messages are Go's and Ollama's own, such as "json: cannot unmarshal
// array into Go value of type api.GenerateRequest".
//
// Routes are named by their pattern, as "/api/generate" or
// "/v1/models/{model}".
package ollamacheck

import (
	"bytes"
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"strconv"
	"strings"

	"github.com/ollama/ollama/anthropic"
	"github.com/ollama/ollama/api"
	"github.com/ollama/ollama/openai"
	"github.com/ollama/ollama/types/model"
)

// Error is an error response that Ollama would send.
type Error struct {
	Status  int
	Message string
	// Early marks an error of Ollama's /v1 middleware, raised before its
	// handler runs. gin's AbortWithStatusJSON writes it, so its body has no
	// trailing newline, where an error of the handler that the middleware
	// passes on has one.
	Early bool
}

// Precheck runs the checks that Ollama's handler for route, and its /v1
// middleware, make on body before they look the model up. It returns the
// error of the first check that fails. A body of the wrong JSON type, or
// with a field of the wrong type, fails the decoding.
func Precheck(route string, body []byte) (Error, bool) {
	switch route {
	case "/api/generate":
		var req api.GenerateRequest
		if err := decodeJSON(body, &req); err != nil {
			return handlerDecodeError(err), true
		}
		return checkTopLogprobs(req.TopLogprobs)
	case "/api/chat":
		var req api.ChatRequest
		if err := decodeJSON(body, &req); err != nil {
			return handlerDecodeError(err), true
		}
		return checkTopLogprobs(req.TopLogprobs)
	case "/api/embed":
		var req api.EmbedRequest
		if err := decodeJSON(body, &req); err != nil {
			return handlerDecodeError(err), true
		}
		return checkEmbedInput(req.Input)
	case "/api/copy":
		var req api.CopyRequest
		if err := decodeJSON(body, &req); err != nil {
			return handlerDecodeError(err), true
		}
		// CopyHandler checks both names before it looks the source up.
		if !model.ParseName(req.Source).IsValid() {
			return badRequest(fmt.Sprintf("source %q is invalid", req.Source), false), true
		}
		if !model.ParseName(req.Destination).IsValid() {
			return badRequest(fmt.Sprintf("destination %q is invalid", req.Destination), false), true
		}
		return Error{}, false
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
	case "/api/create":
		var req api.CreateRequest
		if err := decodeJSON(body, &req); err != nil {
			return handlerDecodeError(err), true
		}
		// CreateHandler checks the paths of the files before the name.
		for file := range req.Files {
			if !fs.ValidPath(file) {
				return badRequest("file path must be relative", false), true
			}
		}
		return Error{}, false
	}
	if v := requestValue(route); v != nil {
		if err := decodeJSON(body, v); err != nil {
			return handlerDecodeError(err), true
		}
	}
	return Error{}, false
}

// handlerDecodeError returns the error of an Ollama handler whose body
// does not decode: "missing request body" for an empty one, or else the
// decoder's message. The /v1 middleware passes the decoder's io.EOF on
// as "EOF".
func handlerDecodeError(err error) Error {
	if errors.Is(err, io.EOF) {
		return badRequest("missing request body", false)
	}
	return badRequest(err.Error(), false)
}

// requestValue returns a new value of the request type that Ollama's
// handler for route decodes, for the routes whose only check before the
// lookup is the decoding. It returns nil for any other route.
func requestValue(route string) any {
	switch route {
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
	}
	return nil
}

// precheckOpenAIChat follows ChatMiddleware (middleware/openai.go), then
// ChatHandler.
func precheckOpenAIChat(body []byte) (Error, bool) {
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
func precheckOpenAIEmbed(body []byte) (Error, bool) {
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
func precheckMessages(body []byte) (Error, bool) {
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

func badRequest(msg string, early bool) Error {
	return Error{Status: http.StatusBadRequest, Message: msg, Early: early}
}

// checkTopLogprobs is the first check of GenerateHandler and ChatHandler
// after the body decodes.
func checkTopLogprobs(n int) (Error, bool) {
	if n < 0 || n > 20 {
		return badRequest("top_logprobs must be between 0 and 20", false), true
	}
	return Error{}, false
}

// checkEmbedInput is EmbedHandler's check of its input: a string, an array
// of strings, or nothing.
func checkEmbedInput(input any) (Error, bool) {
	switch i := input.(type) {
	case nil, string:
		return Error{}, false
	case []any:
		for _, v := range i {
			if _, ok := v.(string); !ok {
				return badRequest("invalid input type", false), true
			}
		}
		return Error{}, false
	}
	return badRequest("invalid input type", false), true
}

// RequestModel returns the model name that Ollama's handler for route
// reads from body, a body that passed Precheck: "model", or "name" on the
// routes that still accept it. It returns "" for a route that names no
// single model, such as /api/copy, or when body does not decode.
func RequestModel(route string, body []byte) string {
	var fields struct {
		Model string `json:"model"`
		Name  string `json:"name"`
	}
	if decodeJSON(body, &fields) != nil {
		return ""
	}
	switch route {
	case "/api/show", "/api/delete", "/api/pull", "/api/push", "/api/create":
		return cmp.Or(fields.Model, fields.Name)
	case "/api/copy":
		return ""
	}
	return fields.Model
}

// CheckName returns the error of Ollama's handler for route to a request
// for name, when the handler rejects the name before it looks the model
// up. That is a missing name, or one that model.ParseName and IsValid
// reject: without a model part, or with characters that no model name
// has. Each handler words that error in its own way (server/routes.go and
// server/create.go). GenerateHandler treats such a name as a model it
// does not have, which is LookupError's 404.
func CheckName(route, name string) (Error, bool) {
	parsed := model.ParseName(name)
	valid := parsed.IsValid()
	switch route {
	case "/api/chat", "/v1/chat/completions", "/v1/responses", "/v1/messages", "/api/embeddings":
		if !valid {
			return badRequest("model is required", false), true
		}
	case "/api/embed", "/v1/embeddings":
		// EmbedHandler passes even an invalid name on to its scheduler,
		// which fails to read a manifest of an unqualified name.
		if n := model.ParseName(parsed.String()); !n.IsFullyQualified() {
			return Error{Status: http.StatusInternalServerError,
				Message: model.Unqualified(n).Error()}, true
		}
	case "/api/show", "/v1/models/{model}":
		switch {
		case name == "":
			return badRequest("model is required", false), true
		case !valid:
			return Error{Status: http.StatusInternalServerError,
				Message: model.Unqualified(parsed).Error()}, true
		}
	case "/api/delete":
		if !valid {
			return badRequest(fmt.Sprintf("name %q is invalid", name), false), true
		}
	case "/api/pull", "/api/create":
		if !valid {
			return badRequest("invalid model name", false), true
		}
	case "/api/push":
		if name == "" {
			return badRequest("model is required", false), true
		}
	}
	return Error{}, false
}

// LookupError returns the response of Ollama's handler for route to a
// request for name, a model that it does not have, or to one without a
// model when name is "": the error of CheckName, or else the handler's
// "not found".
func LookupError(route, name string) Error {
	if e, failed := CheckName(route, name); failed {
		return e
	}
	switch route {
	case "/api/embed", "/v1/embeddings", "/api/embeddings":
		return notFound("model " + strconv.Quote(name) + " not found, try pulling it first")
	case "/api/copy":
		return notFound("model " + strconv.Quote(name) + " not found")
	}
	// GenerateHandler words an invalid name as a model it does not have.
	return notFound("model '" + name + "' not found")
}

func notFound(msg string) Error {
	return Error{Status: http.StatusNotFound, Message: msg}
}
