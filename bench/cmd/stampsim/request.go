package main

import (
	"bytes"
	"encoding/json"
	"net/http"

	"github.com/llmproxy/llmproxy/internal/hostcheck"
	"github.com/llmproxy/llmproxy/ollamasim"
)

// Routes served on the lean path, as Stats names them.
const (
	routeChat       = "/api/chat"
	routeOpenAIChat = "/v1/chat/completions"
)

// leanRequest is a streamed chat request that the lean path can serve
// exactly as ollamasim would.
type leanRequest struct {
	route        string
	openAI       bool // SSE and OpenAI's chunk shape; NDJSON otherwise
	model        string
	modelKey     string
	numPredict   int // maximum generated tokens; zero or negative means no limit
	includeUsage bool
	promptTokens int
}

// leanRequestOf returns the lean form of req, and false when ollamasim
// must serve it: another route, a request the node would reject or treat
// differently, an active fault, or a model that is not ready.
func (s *server) leanRequestOf(c *conn, req *http.Request, body []byte) (leanRequest, bool) {
	if req.Method != http.MethodPost {
		return leanRequest{}, false
	}
	var lr leanRequest
	var ok bool
	switch req.URL.Path {
	case routeChat:
		lr, ok = parseChat(body)
	case routeOpenAIChat:
		lr, ok = parseOpenAIChat(body)
	}
	if !ok {
		return leanRequest{}, false
	}
	// ollamasim responds 403 to a foreign Origin or Host, as Ollama does.
	if req.Header.Get("Origin") != "" ||
		(hostcheck.Applies(c.local) && !hostcheck.Allowed(req.Host)) {
		return leanRequest{}, false
	}
	if s.node.Faults() != (ollamasim.Faults{}) || !s.node.ModelReady(lr.model) {
		return leanRequest{}, false
	}
	lr.modelKey = ollamasim.ModelKey(lr.model)
	return lr, true
}

// chatRequest has the fields and types with which ollamasim decodes
// /api/chat, so that a body decodes here exactly when it decodes there.
type chatRequest struct {
	Model    string `json:"model"`
	Messages []struct {
		Role      string            `json:"role"`
		Content   string            `json:"content"`
		Images    []json.RawMessage `json:"images"`
		ToolCalls json.RawMessage   `json:"tool_calls"`
		ToolName  string            `json:"tool_name"`
	} `json:"messages"`
	Stream    *bool           `json:"stream"`
	Format    json.RawMessage `json:"format"`
	KeepAlive json.RawMessage `json:"keep_alive"`
	Tools     json.RawMessage `json:"tools"`
	Options   map[string]any  `json:"options"`
	Think     json.RawMessage `json:"think"`
}

// parseChat returns the lean form of an /api/chat body, and false unless
// it streams a chat that needs nothing but the model's token stream.
func parseChat(body []byte) (leanRequest, bool) {
	var req chatRequest
	if json.NewDecoder(bytes.NewReader(body)).Decode(&req) != nil {
		return leanRequest{}, false
	}
	streams := req.Stream == nil || *req.Stream
	if !streams || len(req.Messages) == 0 || isSet(req.Format) || !isAbsent(req.KeepAlive) ||
		hasTools(req.Tools) {
		return leanRequest{}, false
	}
	numPredict, ok := leanOptions(req.Options)
	if !ok {
		return leanRequest{}, false
	}
	messages := make([]ollamasim.ChatMessage, len(req.Messages))
	for i, m := range req.Messages {
		messages[i] = ollamasim.ChatMessage{Role: m.Role, Content: m.Content}
	}
	return leanRequest{
		route:        routeChat,
		model:        req.Model,
		numPredict:   numPredict,
		promptTokens: ollamasim.CountChatPromptTokens(messages),
	}, true
}

// leanOptions returns num_predict from Ollama's options, and false when
// another option changes the completion: a seed or a temperature of 0
// make it deterministic, and num_ctx may reload the model. ollamasim
// ignores the options it does not know, and so does the lean path.
func leanOptions(options map[string]any) (numPredict int, ok bool) {
	for key, v := range options {
		if v == nil {
			continue
		}
		n, isNumber := v.(float64)
		switch key {
		case "num_predict":
			if !isNumber {
				return 0, false
			}
			numPredict = int(n)
		case "temperature":
			if !isNumber || n == 0 {
				return 0, false
			}
		case "seed", "num_ctx":
			return 0, false
		}
	}
	return numPredict, true
}

// openAIChatRequest has the fields and types with which ollamasim decodes
// /v1/chat/completions.
type openAIChatRequest struct {
	Model    string `json:"model"`
	Messages []struct {
		Role    string          `json:"role"`
		Content json.RawMessage `json:"content"`
	} `json:"messages"`
	Stream        bool `json:"stream"`
	StreamOptions *struct {
		IncludeUsage bool `json:"include_usage"`
	} `json:"stream_options"`
	MaxTokens           *int     `json:"max_tokens"`
	MaxCompletionTokens *int     `json:"max_completion_tokens"`
	Temperature         *float64 `json:"temperature"`
	Seed                *int64   `json:"seed"`
	ResponseFormat      *struct {
		Type string `json:"type"`
	} `json:"response_format"`
	Tools json.RawMessage `json:"tools"`
}

// parseOpenAIChat returns the lean form of a /v1/chat/completions body,
// and false unless it streams a chat of plain text messages without a
// seed, a temperature of 0, tools or a JSON response format.
func parseOpenAIChat(body []byte) (leanRequest, bool) {
	var req openAIChatRequest
	if json.NewDecoder(bytes.NewReader(body)).Decode(&req) != nil {
		return leanRequest{}, false
	}
	if !req.Stream || len(req.Messages) == 0 || req.Seed != nil || hasTools(req.Tools) ||
		(req.Temperature != nil && *req.Temperature == 0) {
		return leanRequest{}, false
	}
	if rf := req.ResponseFormat; rf != nil && rf.Type != "" && rf.Type != "text" {
		return leanRequest{}, false
	}
	messages := make([]ollamasim.ChatMessage, len(req.Messages))
	for i, m := range req.Messages {
		text, ok := plainText(m.Content)
		if !ok {
			return leanRequest{}, false
		}
		messages[i] = ollamasim.ChatMessage{Role: m.Role, Content: text}
	}
	lr := leanRequest{
		route:        routeOpenAIChat,
		openAI:       true,
		model:        req.Model,
		includeUsage: req.StreamOptions != nil && req.StreamOptions.IncludeUsage,
		promptTokens: ollamasim.CountChatPromptTokens(messages),
	}
	// As in ollamasim, max_completion_tokens takes precedence.
	switch {
	case req.MaxCompletionTokens != nil:
		lr.numPredict = *req.MaxCompletionTokens
	case req.MaxTokens != nil:
		lr.numPredict = *req.MaxTokens
	}
	return lr, true
}

// plainText returns the text of an OpenAI message content that is a
// string or null, and false for an array of parts or anything else.
func plainText(raw json.RawMessage) (string, bool) {
	trimmed := bytes.TrimSpace(raw)
	if len(trimmed) == 0 || bytes.Equal(trimmed, []byte("null")) {
		return "", true
	}
	var text string
	if json.Unmarshal(trimmed, &text) != nil {
		return "", false
	}
	return text, true
}

// isSet reports whether a raw JSON field has a value that ollamasim acts
// on: present, not null and not "".
func isSet(raw json.RawMessage) bool {
	trimmed := bytes.TrimSpace(raw)
	return len(trimmed) > 0 && !bytes.Equal(trimmed, []byte("null")) &&
		!bytes.Equal(trimmed, []byte(`""`))
}

// isAbsent reports whether a raw JSON field is missing or null.
func isAbsent(raw json.RawMessage) bool {
	return len(raw) == 0 || bytes.Equal(raw, []byte("null"))
}

// hasTools reports whether a tools field adds tools to the prompt, as
// ollamasim renders them: set and not an empty array.
func hasTools(raw json.RawMessage) bool {
	return isSet(raw) && !bytes.Equal(bytes.TrimSpace(raw), []byte("[]"))
}
