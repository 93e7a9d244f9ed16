package ollamasim

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"time"
)

type embedRequest struct {
	Model      string          `json:"model"`
	Input      json.RawMessage `json:"input"`
	KeepAlive  json.RawMessage `json:"keep_alive"`
	Truncate   *bool           `json:"truncate"`
	Dimensions int             `json:"dimensions"`
	Options    map[string]any  `json:"options"`
}

type embedResponse struct {
	Model           string      `json:"model"`
	Embeddings      [][]float32 `json:"embeddings"`
	TotalDuration   int64       `json:"total_duration"`
	LoadDuration    int64       `json:"load_duration"`
	PromptEvalCount int         `json:"prompt_eval_count"`
}

type embeddingsRequest struct {
	Model     string          `json:"model"`
	Prompt    string          `json:"prompt"`
	KeepAlive json.RawMessage `json:"keep_alive"`
	Options   map[string]any  `json:"options"`
}

// embedding is the result of embedding several texts.
type embedding struct {
	vectors      [][]float64 // raw, not normalised
	promptTokens int
	loadDuration time.Duration
}

// errInvalidInput is Ollama's error for an input that is neither a string
// nor an array of strings.
var errInvalidInput = errors.New("invalid input type")

func (s *Server) handleEmbed(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	var req embedRequest
	if err := decodeBody(r, &req); err != nil {
		writeAPIError(w, http.StatusBadRequest, err.Error())
		return
	}
	texts, err := parseInput(req.Input)
	if err != nil {
		writeAPIError(w, http.StatusBadRequest, err.Error())
		return
	}
	if string(bytes.TrimSpace(req.Input)) == `""` {
		// Ollama's EmbedHandler (server/routes.go, v0.17.4) embeds nothing
		// for an empty string, so the request only loads the model. Its
		// /v1/embeddings embeds the empty string instead.
		texts = nil
	}
	c, _, ok := s.newCompletion(w, start, modelRequest{
		model:     req.Model,
		keepAlive: req.KeepAlive,
		options:   req.Options,
	})
	if !ok {
		return
	}

	e, err := s.embed(r.Context(), c, texts)
	if err != nil {
		s.completionFailed(w, r, false, shapeOllama, err)
		return
	}
	resp := embedResponse{
		Model:           req.Model,
		Embeddings:      make([][]float32, 0, len(e.vectors)),
		TotalDuration:   int64(time.Since(start)),
		LoadDuration:    int64(e.loadDuration),
		PromptEvalCount: e.promptTokens,
	}
	for _, v := range e.vectors {
		resp.Embeddings = append(resp.Embeddings, normalize(truncateDims(v, req.Dimensions)))
	}
	writeJSON(w, http.StatusOK, contentJSON, resp)
}

// handleEmbeddings serves the legacy route, which returns one unnormalised
// vector, or an empty one for an empty prompt.
func (s *Server) handleEmbeddings(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	var req embeddingsRequest
	if err := decodeBody(r, &req); err != nil {
		writeAPIError(w, http.StatusBadRequest, err.Error())
		return
	}
	c, _, ok := s.newCompletion(w, start, modelRequest{
		model:     req.Model,
		keepAlive: req.KeepAlive,
		options:   req.Options,
	})
	if !ok {
		return
	}
	var texts []string
	if req.Prompt != "" {
		texts = []string{req.Prompt}
	}

	e, err := s.embed(r.Context(), c, texts)
	if err != nil {
		s.completionFailed(w, r, false, shapeOllama, err)
		return
	}
	vector := []float64{}
	if len(e.vectors) > 0 {
		vector = e.vectors[0]
	}
	writeJSON(w, http.StatusOK, contentJSON, map[string][]float64{"embedding": vector})
}

// embed waits for a slot, spends the prompt evaluation time of texts and
// returns their vectors. Embeddings never use the prompt cache.
func (s *Server) embed(ctx context.Context, c *completion, texts []string) (*embedding, error) {
	l, err := s.sched.acquire(ctx, s.ticketFor(c, nil))
	if err != nil {
		return nil, err
	}
	defer s.sched.release(l, nil)

	e := &embedding{loadDuration: time.Since(c.start)}
	for _, text := range texts {
		e.promptTokens += len(tokenize(text))
	}
	if err := s.pause(ctx, perTokens(s.cfg.PromptTokensPerSec, e.promptTokens)); err != nil {
		return nil, err
	}
	for _, text := range texts {
		e.vectors = append(e.vectors, embeddingVector(c.entry.key, text, c.entry.spec.EmbeddingLength))
	}
	return e, nil
}

// parseInput decodes an embedding input: a string or an array of strings.
// An absent input embeds nothing, which loads the model.
func parseInput(raw json.RawMessage) ([]string, error) {
	trimmed := bytes.TrimSpace(raw)
	if len(trimmed) == 0 || bytes.Equal(trimmed, []byte("null")) {
		return nil, nil
	}
	var one string
	if err := json.Unmarshal(trimmed, &one); err == nil {
		return []string{one}, nil
	}
	var many []string
	if err := json.Unmarshal(trimmed, &many); err == nil {
		return many, nil
	}
	return nil, errInvalidInput
}

// truncateDims keeps the first dims values of v; zero or a larger count
// keeps them all.
func truncateDims(v []float64, dims int) []float64 {
	if dims > 0 && dims < len(v) {
		return v[:dims]
	}
	return v
}
