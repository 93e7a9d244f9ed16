package ollamasim

import (
	"bytes"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/http"
	"strings"
	"time"

	"github.com/llmproxy/llmproxy/internal/wire"
)

type openAIChatRequest struct {
	Model               string          `json:"model"`
	Messages            []openAIMessage `json:"messages"`
	Stream              bool            `json:"stream"`
	StreamOptions       *streamOptions  `json:"stream_options"`
	MaxTokens           *int            `json:"max_tokens"`
	MaxCompletionTokens *int            `json:"max_completion_tokens"`
	Temperature         *float64        `json:"temperature"`
	Seed                *int64          `json:"seed"`
	ResponseFormat      *responseFormat `json:"response_format"`
	Tools               json.RawMessage `json:"tools"`
}

type openAIMessage struct {
	Role    string          `json:"role"`
	Content json.RawMessage `json:"content"`
}

type streamOptions struct {
	IncludeUsage bool `json:"include_usage"`
}

type responseFormat struct {
	Type string `json:"type"`
}

type openAICompletionRequest struct {
	Model         string          `json:"model"`
	Prompt        string          `json:"prompt"`
	Stream        bool            `json:"stream"`
	StreamOptions *streamOptions  `json:"stream_options"`
	MaxTokens     *int            `json:"max_tokens"`
	Temperature   *float64        `json:"temperature"`
	Seed          *int64          `json:"seed"`
	Suffix        string          `json:"suffix"`
	Stop          json.RawMessage `json:"stop"`
}

type openAIEmbeddingRequest struct {
	Model          string          `json:"model"`
	Input          json.RawMessage `json:"input"`
	EncodingFormat string          `json:"encoding_format"`
	Dimensions     int             `json:"dimensions"`
}

// openAIChatCompletion is a chat completion or, with Delta set, one chunk of
// a streamed one.
type openAIChatCompletion struct {
	ID                string             `json:"id"`
	Object            string             `json:"object"`
	Created           int64              `json:"created"`
	Model             string             `json:"model"`
	SystemFingerprint string             `json:"system_fingerprint"`
	Choices           []openAIChatChoice `json:"choices"`
	Usage             *openAIUsage       `json:"usage,omitempty"`
}

type openAIChatChoice struct {
	Index        int          `json:"index"`
	Message      *chatMessage `json:"message,omitempty"`
	Delta        *chatMessage `json:"delta,omitempty"`
	FinishReason *string      `json:"finish_reason"`
}

type openAIUsage struct {
	PromptTokens     int `json:"prompt_tokens"`
	CompletionTokens int `json:"completion_tokens"`
	TotalTokens      int `json:"total_tokens"`
}

// openAICompletion is a text completion. A streamed chunk has its fields in
// another order, as Ollama sends them: openAICompletionChunk.
type openAICompletion struct {
	ID                string                   `json:"id"`
	Object            string                   `json:"object"`
	Created           int64                    `json:"created"`
	Model             string                   `json:"model"`
	SystemFingerprint string                   `json:"system_fingerprint"`
	Choices           []openAICompletionChoice `json:"choices"`
	Usage             *openAIUsage             `json:"usage,omitempty"`
}

type openAICompletionChunk struct {
	ID                string                   `json:"id"`
	Object            string                   `json:"object"`
	Created           int64                    `json:"created"`
	Choices           []openAICompletionChoice `json:"choices"`
	Model             string                   `json:"model"`
	SystemFingerprint string                   `json:"system_fingerprint"`
	Usage             *openAIUsage             `json:"usage,omitempty"`
}

type openAICompletionChoice struct {
	Text         string  `json:"text"`
	Index        int     `json:"index"`
	FinishReason *string `json:"finish_reason"`
}

// openAIEmbedding is one vector: an array of numbers, or a base64 string
// when the request asked for encoding_format "base64".
type openAIEmbedding struct {
	Object    string `json:"object"`
	Embedding any    `json:"embedding"`
	Index     int    `json:"index"`
}

type openAIModel struct {
	ID      string `json:"id"`
	Object  string `json:"object"`
	Created int64  `json:"created"`
	OwnedBy string `json:"owned_by"`
}

const systemFingerprint = "fp_ollama"

func (s *Server) handleOpenAIChat(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	var req openAIChatRequest
	if err := decodeBody(r, &req); err != nil {
		writeEarlyError(w, shapeOpenAI, http.StatusBadRequest, err.Error())
		return
	}
	turns, err := openAITurns(req.Messages)
	if err != nil {
		writeEarlyError(w, shapeOpenAI, http.StatusBadRequest, err.Error())
		return
	}
	c, opts, ok := s.newCompletion(w, start, modelRequest{
		model: req.Model,
		options: openAIOptions(
			cmpPtr(req.MaxCompletionTokens, req.MaxTokens), req.Temperature, req.Seed),
		capability: "chat",
		errors:     shapeOpenAI,
	})
	if !ok {
		return
	}

	c.prompt = tokenize(renderChat(turns, req.Tools))
	c.seed = s.completionSeed(req.Model, c.prompt, opts)
	c.numPredict = opts.numPredict
	if rf := req.ResponseFormat; rf != nil {
		c.asJSON = rf.Type != "" && rf.Type != "text"
	}
	s.respondCompletion(w, r, c, s.openAIChatAnswer(req))
}

// openAIChatAnswer shapes a chat completion and its stream chunks.
func (s *Server) openAIChatAnswer(req openAIChatRequest) completionFormat {
	base := openAIChatCompletion{
		ID:                fmt.Sprintf("chatcmpl-%d", s.randomSeed()%1000),
		Created:           s.cfg.Now().Unix(),
		Model:             req.Model,
		SystemFingerprint: systemFingerprint,
	}
	chunk := func(piece string, finish *string) openAIChatCompletion {
		c := base
		c.Object = "chat.completion.chunk"
		c.Choices = []openAIChatChoice{{
			Delta:        &chatMessage{Role: "assistant", Content: piece},
			FinishReason: finish,
		}}
		return c
	}
	return completionFormat{
		stream: req.Stream,
		sse:    true,
		errors: shapeOpenAI,
		chunk:  func(piece string) []any { return []any{chunk(piece, nil)} },
		final: func(o *outcome) []any {
			frames := []any{chunk("", finishReason(o))}
			if req.StreamOptions != nil && req.StreamOptions.IncludeUsage {
				c := base
				c.Object = "chat.completion.chunk"
				c.Choices = []openAIChatChoice{}
				c.Usage = usageOf(o)
				frames = append(frames, c)
			}
			return frames
		},
		whole: func(text string, o *outcome) any {
			c := base
			c.Object = "chat.completion"
			c.Choices = []openAIChatChoice{{
				Message:      &chatMessage{Role: "assistant", Content: text},
				FinishReason: finishReason(o),
			}}
			c.Usage = usageOf(o)
			return c
		},
	}
}

func (s *Server) handleOpenAICompletion(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	var req openAICompletionRequest
	if err := decodeBody(r, &req); err != nil {
		writeEarlyError(w, shapeOpenAI, http.StatusBadRequest, err.Error())
		return
	}
	c, opts, ok := s.newCompletion(w, start, modelRequest{
		model:      req.Model,
		options:    openAIOptions(req.MaxTokens, req.Temperature, req.Seed),
		capability: "generate",
		errors:     shapeOpenAI,
	})
	if !ok {
		return
	}

	c.prompt = tokenize(renderGenerate(generateRequest{Prompt: req.Prompt}))
	c.seed = s.completionSeed(req.Model, c.prompt, opts)
	c.numPredict = opts.numPredict
	s.respondCompletion(w, r, c, s.openAICompletionAnswer(req))
}

// openAICompletionAnswer shapes a text completion and its stream chunks.
func (s *Server) openAICompletionAnswer(req openAICompletionRequest) completionFormat {
	id := fmt.Sprintf("cmpl-%d", s.randomSeed()%1000)
	created := s.cfg.Now().Unix()
	chunk := func(text string, finish *string) openAICompletionChunk {
		return openAICompletionChunk{
			ID:                id,
			Object:            "text_completion",
			Created:           created,
			Choices:           []openAICompletionChoice{{Text: text, FinishReason: finish}},
			Model:             req.Model,
			SystemFingerprint: systemFingerprint,
		}
	}
	return completionFormat{
		stream: req.Stream,
		sse:    true,
		errors: shapeOpenAI,
		chunk:  func(piece string) []any { return []any{chunk(piece, nil)} },
		final: func(o *outcome) []any {
			frames := []any{chunk("", finishReason(o))}
			if req.StreamOptions != nil && req.StreamOptions.IncludeUsage {
				usage := chunk("", nil)
				usage.Choices = []openAICompletionChoice{}
				usage.Usage = usageOf(o)
				frames = append(frames, usage)
			}
			return frames
		},
		whole: func(text string, o *outcome) any {
			return openAICompletion{
				ID:                id,
				Object:            "text_completion",
				Created:           created,
				Model:             req.Model,
				SystemFingerprint: systemFingerprint,
				Choices:           []openAICompletionChoice{{Text: text, FinishReason: finishReason(o)}},
				Usage:             usageOf(o),
			}
		},
	}
}

func (s *Server) handleOpenAIEmbeddings(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	var req openAIEmbeddingRequest
	if err := decodeBody(r, &req); err != nil {
		writeEarlyError(w, shapeOpenAI, http.StatusBadRequest, err.Error())
		return
	}
	texts, err := parseInput(req.Input)
	if errors.Is(err, errInvalidInput) {
		// EmbedHandler's check, after the middleware's.
		writeOpenAIError(w, http.StatusBadRequest, err.Error())
		return
	}
	if err == nil && len(texts) == 0 {
		err = fmt.Errorf("invalid input")
	}
	if err != nil {
		writeEarlyError(w, shapeOpenAI, http.StatusBadRequest, err.Error())
		return
	}
	c, _, ok := s.newCompletion(w, start, modelRequest{model: req.Model, errors: shapeOpenAI})
	if !ok {
		return
	}

	e, err := s.embed(r.Context(), c, texts)
	if err != nil {
		s.completionFailed(w, r, false, shapeOpenAI, err)
		return
	}
	data := make([]openAIEmbedding, 0, len(e.vectors))
	for i, v := range e.vectors {
		vector := normalize(truncateDims(v, req.Dimensions))
		var encoded any = vector
		if req.EncodingFormat == "base64" {
			encoded = base64Floats(vector)
		}
		data = append(data, openAIEmbedding{Object: "embedding", Embedding: encoded, Index: i})
	}
	writeJSON(w, http.StatusOK, contentOpenAIJSON, struct {
		Object string            `json:"object"`
		Data   []openAIEmbedding `json:"data"`
		Model  string            `json:"model"`
		Usage  map[string]int    `json:"usage"`
	}{
		Object: "list",
		Data:   data,
		Model:  req.Model,
		Usage:  map[string]int{"prompt_tokens": e.promptTokens, "total_tokens": e.promptTokens},
	})
}

func (s *Server) handleOpenAIModels(w http.ResponseWriter, r *http.Request) {
	data := []openAIModel{}
	for _, e := range s.models.list() {
		data = append(data, openAIModelOf(e.spec.Name, e))
	}
	writeJSON(w, http.StatusOK, contentOpenAIJSON, struct {
		Object string        `json:"object"`
		Data   []openAIModel `json:"data"`
	}{Object: "list", Data: data})
}

func (s *Server) handleOpenAIModel(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("model")
	e := s.models.get(name)
	if e == nil {
		writeOpenAIError(w, http.StatusNotFound, notFoundMessage(name))
		return
	}
	writeJSON(w, http.StatusOK, contentOpenAIJSON, openAIModelOf(name, e))
}

// openAIModelOf describes a model as /v1/models does. The owner is the
// namespace of id, as Ollama derives it: "library" for official models.
func openAIModelOf(id string, e *modelEntry) openAIModel {
	return openAIModel{ID: id, Object: "model", Created: e.modifiedAt.Unix(),
		OwnedBy: wire.ModelNamespace(id)}
}

// openAITurns extracts the text of OpenAI messages, whose content is a
// string, an array of parts or null.
func openAITurns(messages []openAIMessage) ([]turn, error) {
	if len(messages) == 0 {
		// NOTE: Ollama treats a chat without messages as a model load. This
		// simulation rejects it on /v1, which has no load response.
		return nil, fmt.Errorf("messages is required")
	}
	turns := make([]turn, 0, len(messages))
	for i, m := range messages {
		text, err := messageText(m.Content)
		if err != nil {
			return nil, fmt.Errorf("messages[%d].content: %w", i, err)
		}
		turns = append(turns, turn{role: m.Role, content: text})
	}
	return turns, nil
}

// messageText returns the text of a chat message's content, a string or
// an array of parts of which only the "text" parts count.
func messageText(raw json.RawMessage) (string, error) { return partsText(raw, "text") }

// partsText returns the text of a content that is a string or an array
// of parts. With partType set, only the parts of that type count, and
// otherwise every part's text does (Responses API input items mix
// input_text, output_text and text).
func partsText(raw json.RawMessage, partType string) (string, error) {
	trimmed := bytes.TrimSpace(raw)
	if len(trimmed) == 0 || bytes.Equal(trimmed, []byte("null")) {
		return "", nil
	}
	var text string
	if err := json.Unmarshal(trimmed, &text); err == nil {
		return text, nil
	}
	var parts []struct {
		Type string `json:"type"`
		Text string `json:"text"`
	}
	if err := json.Unmarshal(trimmed, &parts); err != nil {
		return "", fmt.Errorf("invalid message content: %w", err)
	}
	var b strings.Builder
	for _, p := range parts {
		if partType == "" || p.Type == partType {
			b.WriteString(p.Text)
		}
	}
	return b.String(), nil
}

// openAIOptions turns OpenAI sampling fields into Ollama options, as
// Ollama's compatibility layer does.
func openAIOptions(maxTokens *int, temperature *float64, seed *int64) map[string]any {
	opts := map[string]any{}
	if maxTokens != nil {
		opts["num_predict"] = float64(*maxTokens)
	}
	if temperature != nil {
		opts["temperature"] = *temperature
	}
	if seed != nil {
		opts["seed"] = float64(*seed)
	}
	return opts
}

func cmpPtr(values ...*int) *int {
	for _, v := range values {
		if v != nil {
			return v
		}
	}
	return nil
}

func finishReason(o *outcome) *string {
	reason := o.doneReason
	return &reason
}

func usageOf(o *outcome) *openAIUsage {
	return &openAIUsage{
		PromptTokens:     o.promptEvalCount,
		CompletionTokens: o.evalCount,
		TotalTokens:      o.promptEvalCount + o.evalCount,
	}
}

// base64Floats encodes a vector as OpenAI's base64 format: little-endian
// float32 values.
func base64Floats(v []float32) string {
	buf := make([]byte, 4*len(v))
	for i, x := range v {
		binary.LittleEndian.PutUint32(buf[4*i:], math.Float32bits(x))
	}
	return base64.StdEncoding.EncodeToString(buf)
}
