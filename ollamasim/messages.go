package ollamasim

import (
	"encoding/json"
	"fmt"
	"net/http"
	"time"
)

// messagesRequest is the part of an Anthropic Messages API request that
// the simulation reads.
type messagesRequest struct {
	Model       string             `json:"model"`
	MaxTokens   int                `json:"max_tokens"`
	Messages    []anthropicMessage `json:"messages"`
	System      json.RawMessage    `json:"system"`
	Stream      bool               `json:"stream"`
	Temperature *float64           `json:"temperature"`
	Tools       json.RawMessage    `json:"tools"`
}

type anthropicMessage struct {
	Role    string          `json:"role"`
	Content json.RawMessage `json:"content"`
}

// messagesResponse is Ollama's anthropic.MessagesResponse: a whole
// response, or without stop_reason the message of message_start.
type messagesResponse struct {
	ID         string               `json:"id"`
	Type       string               `json:"type"`
	Role       string               `json:"role"`
	Model      string               `json:"model"`
	Content    []anthropicTextBlock `json:"content"`
	StopReason string               `json:"stop_reason,omitempty"`
	Usage      anthropicUsage       `json:"usage"`
}

type anthropicTextBlock struct {
	Type string `json:"type"`
	Text string `json:"text"`
}

type anthropicUsage struct {
	InputTokens  int `json:"input_tokens"`
	OutputTokens int `json:"output_tokens"`
}

// The events of a /v1/messages stream, with Ollama's field order.
type (
	messageStartEvent struct {
		Type    string           `json:"type"`
		Message messagesResponse `json:"message"`
	}
	contentBlockStartEvent struct {
		Type         string             `json:"type"`
		Index        int                `json:"index"`
		ContentBlock anthropicTextBlock `json:"content_block"`
	}
	contentBlockDeltaEvent struct {
		Type  string             `json:"type"`
		Index int                `json:"index"`
		Delta anthropicTextDelta `json:"delta"`
	}
	anthropicTextDelta struct {
		Type string `json:"type"`
		Text string `json:"text"`
	}
	contentBlockStopEvent struct {
		Type  string `json:"type"`
		Index int    `json:"index"`
	}
	messageDeltaEvent struct {
		Type  string         `json:"type"`
		Delta messageDelta   `json:"delta"`
		Usage anthropicUsage `json:"usage"`
	}
	messageDelta struct {
		StopReason string `json:"stop_reason,omitempty"`
	}
	messageStopEvent struct {
		Type string `json:"type"`
	}
)

func (s *Server) handleMessages(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	var req messagesRequest
	if err := decodeBody(r, &req); err != nil {
		writeEarlyError(w, shapeAnthropic, http.StatusBadRequest, err.Error())
		return
	}
	// The checks and messages of Ollama's AnthropicMessagesMiddleware
	// (middleware/anthropic.go, v0.17.4), in its order.
	var problem string
	switch {
	case req.Model == "":
		problem = "model is required"
	case req.MaxTokens <= 0:
		problem = "max_tokens is required and must be positive"
	case len(req.Messages) == 0:
		problem = "messages is required"
	}
	if problem != "" {
		writeEarlyError(w, shapeAnthropic, http.StatusBadRequest, problem)
		return
	}
	turns, err := anthropicTurns(req)
	if err != nil {
		writeEarlyError(w, shapeAnthropic, http.StatusBadRequest, err.Error())
		return
	}
	maxTokens := req.MaxTokens
	c, opts, ok := s.newCompletion(w, start, modelRequest{
		model:      req.Model,
		options:    openAIOptions(&maxTokens, req.Temperature, nil),
		capability: "chat",
		errors:     shapeAnthropic,
	})
	if !ok {
		return
	}

	c.prompt = tokenize(renderChat(turns, req.Tools))
	c.seed = s.completionSeed(req.Model, c.prompt, opts)
	c.numPredict = opts.numPredict
	s.respondCompletion(w, r, c, s.messagesFormat(req, estimateInputTokens(turns)))
}

// anthropicTurns extracts the text of the system prompt and the messages,
// whose content is a string or an array of blocks. Only text blocks count.
func anthropicTurns(req messagesRequest) ([]turn, error) {
	var turns []turn
	system, err := messageText(req.System)
	if err != nil {
		return nil, fmt.Errorf("system: %w", err)
	}
	if system != "" {
		turns = append(turns, turn{role: "system", content: system})
	}
	for i, m := range req.Messages {
		text, err := messageText(m.Content)
		if err != nil {
			return nil, fmt.Errorf("messages[%d].content: %w", i, err)
		}
		turns = append(turns, turn{role: m.Role, content: text})
	}
	return turns, nil
}

// estimateInputTokens returns the input tokens that message_start reports
// before the prompt is evaluated: Ollama's estimate of a quarter of the
// bytes of the roles and texts, and at least 1.
func estimateInputTokens(turns []turn) int {
	n := 0
	for _, t := range turns {
		if t.role != "system" {
			n += len(t.role)
		}
		n += len(t.content)
	}
	return max(n/4, 1)
}

// messagesFormat shapes a Messages API response and the events of its
// stream, as Ollama's anthropic.StreamConverter sends them: message_start,
// one text block with a delta per token, message_delta with the stop
// reason and the usage, and message_stop.
func (s *Server) messagesFormat(req messagesRequest, estimate int) completionFormat {
	id := fmt.Sprintf("msg_%016x%08x", s.randomSeed(), uint32(s.randomSeed()))
	started := false
	begin := func() []any {
		if started {
			return nil
		}
		started = true
		return []any{
			namedEvent{"message_start", messageStartEvent{
				Type: "message_start",
				Message: messagesResponse{
					ID: id, Type: "message", Role: "assistant", Model: req.Model,
					Content: []anthropicTextBlock{},
					Usage:   anthropicUsage{InputTokens: estimate},
				},
			}},
			namedEvent{"content_block_start", contentBlockStartEvent{
				Type: "content_block_start", ContentBlock: anthropicTextBlock{Type: "text"},
			}},
		}
	}
	return completionFormat{
		stream: req.Stream,
		sse:    true,
		errors: shapeAnthropic,
		events: true,
		chunk: func(piece string) []any {
			return append(begin(), namedEvent{"content_block_delta", contentBlockDeltaEvent{
				Type:  "content_block_delta",
				Delta: anthropicTextDelta{Type: "text_delta", Text: piece},
			}})
		},
		final: func(o *outcome) []any {
			return append(begin(),
				namedEvent{"content_block_stop", contentBlockStopEvent{Type: "content_block_stop"}},
				namedEvent{"message_delta", messageDeltaEvent{
					Type:  "message_delta",
					Delta: messageDelta{StopReason: stopReason(o)},
					Usage: anthropicUsage{InputTokens: o.promptEvalCount, OutputTokens: o.evalCount},
				}},
				namedEvent{"message_stop", messageStopEvent{Type: "message_stop"}})
		},
		whole: func(text string, o *outcome) any {
			return messagesResponse{
				ID:         id,
				Type:       "message",
				Role:       "assistant",
				Model:      req.Model,
				Content:    []anthropicTextBlock{{Type: "text", Text: text}},
				StopReason: stopReason(o),
				Usage:      anthropicUsage{InputTokens: o.promptEvalCount, OutputTokens: o.evalCount},
			}
		},
	}
}

// stopReason maps Ollama's done_reason to Anthropic's stop_reason, as
// Ollama's anthropic.mapStopReason does.
func stopReason(o *outcome) string {
	switch o.doneReason {
	case "stop":
		return "end_turn"
	case "length":
		return "max_tokens"
	case "":
		return ""
	}
	return "stop_sequence"
}
