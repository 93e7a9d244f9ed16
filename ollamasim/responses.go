package ollamasim

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"
)

// responsesRequest is the part of an OpenAI Responses API request that
// Ollama's compatibility layer reads (openai/responses.go, v0.17.4).
type responsesRequest struct {
	Model           string             `json:"model"`
	Input           json.RawMessage    `json:"input"`
	Instructions    string             `json:"instructions"`
	MaxOutputTokens *int               `json:"max_output_tokens"`
	Temperature     *float64           `json:"temperature"`
	TopP            *float64           `json:"top_p"`
	Truncation      *string            `json:"truncation"`
	Stream          *bool              `json:"stream"`
	Background      bool               `json:"background"`
	Text            *responsesText     `json:"text"`
	Tools           json.RawMessage    `json:"tools"`
	Reasoning       responsesReasoning `json:"reasoning"`
}

type responsesText struct {
	Format json.RawMessage `json:"format"`
}

type responsesReasoning struct {
	Effort  string `json:"effort,omitempty"`
	Summary string `json:"summary,omitempty"`
}

// responsesObject is a Responses API response, with its fields in the
// order of Ollama's non-streamed response. The events of a stream carry
// it with sorted keys instead: see sortKeys.
type responsesObject struct {
	ID                 string                `json:"id"`
	Object             string                `json:"object"`
	CreatedAt          int64                 `json:"created_at"`
	CompletedAt        *int64                `json:"completed_at"`
	Status             string                `json:"status"`
	IncompleteDetails  any                   `json:"incomplete_details"`
	Model              string                `json:"model"`
	PreviousResponseID *string               `json:"previous_response_id"`
	Instructions       *string               `json:"instructions"`
	Output             []responsesOutputItem `json:"output"`
	Error              any                   `json:"error"`
	Tools              json.RawMessage       `json:"tools"`
	ToolChoice         string                `json:"tool_choice"`
	Truncation         string                `json:"truncation"`
	ParallelToolCalls  bool                  `json:"parallel_tool_calls"`
	Text               responsesText         `json:"text"`
	TopP               float64               `json:"top_p"`
	PresencePenalty    float64               `json:"presence_penalty"`
	FrequencyPenalty   float64               `json:"frequency_penalty"`
	TopLogprobs        int                   `json:"top_logprobs"`
	Temperature        float64               `json:"temperature"`
	Reasoning          *reasoningEcho        `json:"reasoning"`
	Usage              *responsesUsage       `json:"usage"`
	MaxOutputTokens    *int                  `json:"max_output_tokens"`
	MaxToolCalls       *int                  `json:"max_tool_calls"`
	Store              bool                  `json:"store"`
	Background         bool                  `json:"background"`
	ServiceTier        string                `json:"service_tier"`
	Metadata           map[string]any        `json:"metadata"`
	SafetyIdentifier   *string               `json:"safety_identifier"`
	PromptCacheKey     *string               `json:"prompt_cache_key"`
}

type reasoningEcho struct {
	Effort  *string `json:"effort"`
	Summary *string `json:"summary"`
}

type responsesOutputItem struct {
	ID      string                `json:"id"`
	Type    string                `json:"type"`
	Status  string                `json:"status"`
	Role    string                `json:"role"`
	Content []responsesOutputText `json:"content"`
}

type responsesOutputText struct {
	Type        string `json:"type"`
	Text        string `json:"text"`
	Annotations []any  `json:"annotations"`
	Logprobs    []any  `json:"logprobs"`
}

type responsesUsage struct {
	InputTokens         int            `json:"input_tokens"`
	OutputTokens        int            `json:"output_tokens"`
	TotalTokens         int            `json:"total_tokens"`
	InputTokensDetails  map[string]int `json:"input_tokens_details"`
	OutputTokensDetails map[string]int `json:"output_tokens_details"`
}

func (s *Server) handleResponses(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	var req responsesRequest
	if err := decodeBody(r, &req); err != nil {
		writeEarlyError(w, shapeOpenAI, http.StatusBadRequest, err.Error())
		return
	}
	turns, err := responsesTurns(req.Input)
	if err != nil {
		writeEarlyError(w, shapeOpenAI, http.StatusBadRequest, err.Error())
		return
	}
	if req.Instructions != "" {
		turns = append([]turn{{role: "system", content: req.Instructions}}, turns...)
	}
	c, opts, ok := s.newCompletion(w, start, modelRequest{
		model:      req.Model,
		options:    openAIOptions(req.MaxOutputTokens, req.Temperature, nil),
		capability: "chat",
		errors:     shapeOpenAI,
	})
	if !ok {
		return
	}

	format := s.responsesFormat(req)
	if len(turns) == 0 {
		// Ollama passes a chat without messages on, which loads the model
		// and returns an empty response.
		if err := s.preload(r.Context(), c); err != nil {
			s.completionFailed(w, r, false, shapeOpenAI, err)
			return
		}
		s.finishCompletion(w, format, nil, "", &outcome{doneReason: "load"})
		return
	}
	c.prompt = tokenize(renderChat(turns, req.Tools))
	c.seed = s.completionSeed(req.Model, c.prompt, opts)
	c.numPredict = opts.numPredict
	if req.Text != nil {
		var f responseFormat
		_ = json.Unmarshal(req.Text.Format, &f)
		c.asJSON = f.Type != "" && f.Type != "text"
	}
	s.respondCompletion(w, r, c, format)
}

// responsesTurns extracts the messages of a Responses API input: a string,
// which is one user message, or an array of items. Message items have a
// content string or an array of parts with text. A function call output
// becomes a tool message. Other items are skipped.
func responsesTurns(raw json.RawMessage) ([]turn, error) {
	trimmed := bytes.TrimSpace(raw)
	if len(trimmed) == 0 || bytes.Equal(trimmed, []byte("null")) {
		return nil, nil
	}
	var text string
	if err := json.Unmarshal(trimmed, &text); err == nil {
		return []turn{{role: "user", content: text}}, nil
	}
	var items []struct {
		Type    string          `json:"type"`
		Role    string          `json:"role"`
		Content json.RawMessage `json:"content"`
		Output  string          `json:"output"`
	}
	if err := json.Unmarshal(trimmed, &items); err != nil {
		return nil, errors.New("input must be a string or an array of input items")
	}
	var turns []turn
	for i, item := range items {
		switch {
		case item.Type == "function_call_output":
			turns = append(turns, turn{role: "tool", content: item.Output})
		case item.Role != "" && (item.Type == "" || item.Type == "message"):
			content, err := partsText(item.Content, "")
			if err != nil {
				return nil, fmt.Errorf("input[%d].content: %w", i, err)
			}
			turns = append(turns, turn{role: item.Role, content: content})
		}
	}
	return turns, nil
}

// responsesFormat shapes a Responses API response and the events of its
// stream, as Ollama's ResponsesStreamConverter sends them. The stream
// opens with response.created and response.in_progress, then the message
// item and its text part, and has one text delta per token. The closing
// events end with response.completed, which carries the usage. Every
// event has a sequence number.
func (s *Server) responsesFormat(req responsesRequest) completionFormat {
	responseID := fmt.Sprintf("resp_%d", s.randomSeed()%1000000)
	itemID := fmt.Sprintf("msg_%d", s.randomSeed()%1000000)
	base := s.responsesBase(req, responseID)

	sequence := 0
	event := func(name string, data map[string]any) any {
		data["type"] = name
		data["sequence_number"] = sequence
		sequence++
		return namedEvent{name: name, data: data}
	}
	responseEvent := func(name string, r responsesObject) any {
		return event(name, map[string]any{"response": sortKeys(r)})
	}
	textPart := func(text string) map[string]any {
		return map[string]any{"type": "output_text", "text": text, "annotations": []any{}, "logprobs": []any{}}
	}
	messageItem := func(status string, content []any) map[string]any {
		return map[string]any{"id": itemID, "type": "message", "status": status,
			"role": "assistant", "content": content}
	}

	started, textStarted := false, false
	var text strings.Builder
	begin := func() []any {
		if started {
			return nil
		}
		started = true
		r := base
		r.Status = "in_progress"
		return []any{responseEvent("response.created", r), responseEvent("response.in_progress", r)}
	}
	return completionFormat{
		stream: req.Stream != nil && *req.Stream,
		sse:    true,
		errors: shapeOpenAI,
		events: true,
		chunk: func(piece string) []any {
			frames := begin()
			if !textStarted {
				textStarted = true
				frames = append(frames,
					event("response.output_item.added", map[string]any{
						"output_index": 0, "item": messageItem("in_progress", []any{})}),
					event("response.content_part.added", map[string]any{
						"item_id": itemID, "output_index": 0, "content_index": 0, "part": textPart("")}))
			}
			text.WriteString(piece)
			return append(frames, event("response.output_text.delta", map[string]any{
				"item_id": itemID, "output_index": 0, "content_index": 0,
				"delta": piece, "logprobs": []any{}}))
		},
		final: func(o *outcome) []any {
			frames := begin()
			r := base
			if textStarted {
				all := text.String()
				frames = append(frames,
					event("response.output_text.done", map[string]any{
						"item_id": itemID, "output_index": 0, "content_index": 0,
						"text": all, "logprobs": []any{}}),
					event("response.content_part.done", map[string]any{
						"item_id": itemID, "output_index": 0, "content_index": 0, "part": textPart(all)}),
					event("response.output_item.done", map[string]any{
						"output_index": 0, "item": messageItem("completed", []any{textPart(all)})}))
				r.Output = []responsesOutputItem{outputMessage(itemID, all)}
			}
			completed := s.cfg.Now().Unix()
			r.CompletedAt = &completed
			r.Status = "completed"
			r.Usage = responsesUsageOf(o)
			return append(frames, responseEvent("response.completed", r))
		},
		whole: func(text string, o *outcome) any {
			r := base
			completed := s.cfg.Now().Unix()
			r.CompletedAt = &completed
			r.Status = "completed"
			r.Output = []responsesOutputItem{outputMessage(itemID, text)}
			r.Usage = responsesUsageOf(o)
			return r
		},
	}
}

// responsesBase returns the response object before its status, output,
// usage and completion time are known. It echoes the request's settings,
// with Ollama's defaults for those it lacks.
// NOTE: like Ollama v0.17.4, the status is "completed" also when the
// response stopped at max_output_tokens, and incomplete_details stays
// null.
func (s *Server) responsesBase(req responsesRequest, id string) responsesObject {
	r := responsesObject{
		ID:                id,
		Object:            "response",
		CreatedAt:         s.cfg.Now().Unix(),
		Model:             req.Model,
		Output:            []responsesOutputItem{},
		Tools:             json.RawMessage("[]"),
		ToolChoice:        "auto",
		Truncation:        "disabled",
		ParallelToolCalls: true,
		Text:              responsesText{Format: json.RawMessage(`{"type":"text"}`)},
		TopP:              1,
		Temperature:       1,
		MaxOutputTokens:   req.MaxOutputTokens,
		ServiceTier:       "default",
		Background:        req.Background,
		Metadata:          map[string]any{},
	}
	if req.Instructions != "" {
		r.Instructions = &req.Instructions
	}
	if tools := bytes.TrimSpace(req.Tools); len(tools) > 0 && !bytes.Equal(tools, []byte("null")) {
		r.Tools = tools
	}
	if req.Truncation != nil {
		r.Truncation = *req.Truncation
	}
	if req.Text != nil && len(bytes.TrimSpace(req.Text.Format)) > 0 {
		r.Text.Format = req.Text.Format
	}
	if req.TopP != nil {
		r.TopP = *req.TopP
	}
	if req.Temperature != nil {
		r.Temperature = *req.Temperature
	}
	if effort, summary := req.Reasoning.Effort, req.Reasoning.Summary; effort != "" || summary != "" {
		r.Reasoning = &reasoningEcho{}
		if effort != "" {
			r.Reasoning.Effort = &effort
		}
		if summary != "" {
			r.Reasoning.Summary = &summary
		}
	}
	return r
}

func outputMessage(id, text string) responsesOutputItem {
	return responsesOutputItem{
		ID:     id,
		Type:   "message",
		Status: "completed",
		Role:   "assistant",
		Content: []responsesOutputText{{
			Type: "output_text", Text: text, Annotations: []any{}, Logprobs: []any{},
		}},
	}
}

func responsesUsageOf(o *outcome) *responsesUsage {
	return &responsesUsage{
		InputTokens:         o.promptEvalCount,
		OutputTokens:        o.evalCount,
		TotalTokens:         o.promptEvalCount + o.evalCount,
		InputTokensDetails:  map[string]int{"cached_tokens": 0},
		OutputTokensDetails: map[string]int{"reasoning_tokens": 0},
	}
}

// sortKeys returns v as generic JSON values, whose objects encoding/json
// writes with sorted keys, as Ollama writes the maps of its stream events.
func sortKeys(v any) any {
	data, err := json.Marshal(v)
	if err != nil {
		return nil
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	var out any
	if err := dec.Decode(&out); err != nil {
		return nil
	}
	return out
}
