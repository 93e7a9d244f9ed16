package ollamasim

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"
)

type generateRequest struct {
	Model     string            `json:"model"`
	Prompt    string            `json:"prompt"`
	Suffix    string            `json:"suffix"`
	System    string            `json:"system"`
	Template  string            `json:"template"`
	Context   []int             `json:"context"`
	Stream    *bool             `json:"stream"`
	Raw       bool              `json:"raw"`
	Format    json.RawMessage   `json:"format"`
	KeepAlive json.RawMessage   `json:"keep_alive"`
	Images    []json.RawMessage `json:"images"`
	Options   map[string]any    `json:"options"`
	Think     json.RawMessage   `json:"think"`
}

// generateLine is one line of /api/generate. Intermediate lines leave the
// optional fields empty; the final line fills them.
type generateLine struct {
	Model      string `json:"model"`
	CreatedAt  string `json:"created_at"`
	Response   string `json:"response"`
	Done       bool   `json:"done"`
	DoneReason string `json:"done_reason,omitempty"`
	Context    []int  `json:"context,omitempty"`
	*metrics
}

type chatRequest struct {
	Model     string          `json:"model"`
	Messages  []chatMessageIn `json:"messages"`
	Stream    *bool           `json:"stream"`
	Format    json.RawMessage `json:"format"`
	KeepAlive json.RawMessage `json:"keep_alive"`
	Tools     json.RawMessage `json:"tools"`
	Options   map[string]any  `json:"options"`
	Think     json.RawMessage `json:"think"`
}

type chatMessageIn struct {
	Role      string            `json:"role"`
	Content   string            `json:"content"`
	Images    []json.RawMessage `json:"images"`
	ToolCalls json.RawMessage   `json:"tool_calls"`
	ToolName  string            `json:"tool_name"`
}

type chatMessage struct {
	Role    string `json:"role"`
	Content string `json:"content"`
}

// chatLine is one line of /api/chat.
type chatLine struct {
	Model      string      `json:"model"`
	CreatedAt  string      `json:"created_at"`
	Message    chatMessage `json:"message"`
	Done       bool        `json:"done"`
	DoneReason string      `json:"done_reason,omitempty"`
	*metrics
}

// turn is one chat message reduced to what the prompt template uses.
type turn struct {
	role    string
	content string
}

func (s *Server) handleGenerate(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	var req generateRequest
	if err := decodeBody(r, &req); err != nil {
		writeAPIError(w, http.StatusBadRequest, err.Error())
		return
	}
	c, opts, ok := s.newCompletion(w, start, modelRequest{
		model:      req.Model,
		keepAlive:  req.KeepAlive,
		options:    req.Options,
		capability: "generate",
	})
	if !ok {
		return
	}

	if req.Prompt == "" && len(req.Images) == 0 {
		unload := len(req.KeepAlive) > 0 && c.keepAlive == 0
		s.loadOrUnload(w, r, c, unload, func(reason string) any {
			return generateLine{Model: req.Model, CreatedAt: s.now(), Done: true, DoneReason: reason}
		})
		return
	}

	c.prompt = append(slices.Clone(req.Context), tokenize(renderGenerate(req))...)
	c.seed = s.completionSeed(req.Model, c.prompt, opts)
	c.numPredict = opts.numPredict
	c.asJSON = hasFormat(req.Format)
	s.respondCompletion(w, r, c, s.generateFormat(req))
}

// generateFormat shapes the lines of /api/generate.
func (s *Server) generateFormat(req generateRequest) completionFormat {
	final := func(text string, o *outcome) generateLine {
		return generateLine{
			Model:      req.Model,
			CreatedAt:  s.now(),
			Response:   text,
			Done:       true,
			DoneReason: o.doneReason,
			Context:    o.tokens,
			metrics:    o.metrics(),
		}
	}
	return completionFormat{
		stream: req.Stream == nil || *req.Stream,
		chunk: func(piece string) []any {
			return []any{generateLine{Model: req.Model, CreatedAt: s.now(), Response: piece}}
		},
		final: func(o *outcome) []any { return []any{final("", o)} },
		whole: func(text string, o *outcome) any { return final(text, o) },
	}
}

func (s *Server) handleChat(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	var req chatRequest
	if err := decodeBody(r, &req); err != nil {
		writeAPIError(w, http.StatusBadRequest, err.Error())
		return
	}
	c, opts, ok := s.newCompletion(w, start, modelRequest{
		model:      req.Model,
		keepAlive:  req.KeepAlive,
		options:    req.Options,
		capability: "chat",
	})
	if !ok {
		return
	}

	if len(req.Messages) == 0 {
		unload := len(req.KeepAlive) > 0 && c.keepAlive == 0
		s.loadOrUnload(w, r, c, unload, func(reason string) any {
			return chatLine{
				Model:      req.Model,
				CreatedAt:  s.now(),
				Message:    assistantMessage(""),
				Done:       true,
				DoneReason: reason,
			}
		})
		return
	}

	turns := make([]turn, 0, len(req.Messages))
	for _, m := range req.Messages {
		turns = append(turns, turn{role: m.Role, content: m.Content})
	}
	c.prompt = tokenize(renderChat(turns, req.Tools))
	c.seed = s.completionSeed(req.Model, c.prompt, opts)
	c.numPredict = opts.numPredict
	c.asJSON = hasFormat(req.Format)
	s.respondCompletion(w, r, c, s.chatFormat(req))
}

// chatFormat shapes the lines of /api/chat.
func (s *Server) chatFormat(req chatRequest) completionFormat {
	final := func(text string, o *outcome) chatLine {
		return chatLine{
			Model:      req.Model,
			CreatedAt:  s.now(),
			Message:    assistantMessage(text),
			Done:       true,
			DoneReason: o.doneReason,
			metrics:    o.metrics(),
		}
	}
	return completionFormat{
		stream: req.Stream == nil || *req.Stream,
		chunk: func(piece string) []any {
			return []any{chatLine{Model: req.Model, CreatedAt: s.now(), Message: assistantMessage(piece)}}
		},
		final: func(o *outcome) []any { return []any{final("", o)} },
		whole: func(text string, o *outcome) any { return final(text, o) },
	}
}

func assistantMessage(content string) chatMessage {
	return chatMessage{Role: "assistant", Content: content}
}

// now returns the current time as created_at.
func (s *Server) now() string {
	return timestamp(s.cfg.Now())
}

// modelRequest holds the fields every inference request shares.
type modelRequest struct {
	model     string
	keepAlive json.RawMessage
	options   map[string]any
	// capability is the capability the model needs, "generate" or "chat",
	// and "" for embeddings, which any model serves as in Ollama.
	capability string
	errors     errorShape
}

// newCompletion checks the model and options of a request. When they are
// invalid, it writes the error response and returns false.
func (s *Server) newCompletion(
	w http.ResponseWriter,
	start time.Time,
	mr modelRequest,
) (*completion, options, bool) {
	entry, ok := s.lookupModel(w, mr.model, mr.errors, mr.capability == "")
	if !ok {
		return nil, options{}, false
	}
	if mr.capability != "" && entry.spec.Embedding {
		message := fmt.Sprintf("%q does not support %s", mr.model, mr.capability)
		writeError(w, mr.errors, http.StatusBadRequest, message)
		return nil, options{}, false
	}
	keepAlive, err := s.parseKeepAlive(mr.keepAlive)
	if err != nil {
		writeError(w, mr.errors, http.StatusBadRequest, err.Error())
		return nil, options{}, false
	}
	opts, err := parseOptions(mr.options)
	if err != nil {
		writeError(w, mr.errors, http.StatusBadRequest, err.Error())
		return nil, options{}, false
	}
	return &completion{
		entry:     entry,
		numCtx:    s.contextLength(entry.spec, opts.numCtx),
		keepAlive: keepAlive,
		start:     start,
	}, opts, true
}

// lookupModel returns the model a request names. It writes 404 when the
// node does not have it, as GenerateHandler also does for a request
// without a model. Routes that reject a missing name with an error of
// their own do so in passChecks. The 404 of an embedding request
// has the wording of Ollama's scheduler, which its embed handlers pass on
// (server/routes.go, v0.17.4).
func (s *Server) lookupModel(
	w http.ResponseWriter,
	name string,
	shape errorShape,
	embedding bool,
) (*modelEntry, bool) {
	entry := s.models.get(name)
	if entry == nil {
		message := notFoundMessage(name)
		if embedding {
			message = schedulerNotFoundMessage(name)
		}
		writeError(w, shape, http.StatusNotFound, message)
		return nil, false
	}
	return entry, true
}

// notFoundMessage returns Ollama's error for a model the node does not
// have, as recorded from Ollama 0.25 on /api/generate and
// /v1/chat/completions.
func notFoundMessage(name string) string {
	return fmt.Sprintf("model '%s' not found", name)
}

// schedulerNotFoundMessage returns the error of Ollama's scheduler for a
// model the node does not have.
func schedulerNotFoundMessage(name string) string {
	return fmt.Sprintf("model %q not found, try pulling it first", name)
}

// loadOrUnload responds to a request without a prompt: keep_alive 0 unloads the
// model (done_reason "unload"), anything else loads it ("load").
func (s *Server) loadOrUnload(
	w http.ResponseWriter,
	r *http.Request,
	c *completion,
	unload bool,
	reply func(reason string) any,
) {
	if unload {
		s.sched.expireNow(c.entry.key)
		writeJSON(w, http.StatusOK, contentJSON, reply("unload"))
		return
	}
	if err := s.preload(r.Context(), c); err != nil {
		s.completionFailed(w, r, false, shapeOllama, err)
		return
	}
	writeJSON(w, http.StatusOK, contentJSON, reply("load"))
}

// renderGenerate applies the chat template to a generate request; raw
// requests bypass it.
func renderGenerate(req generateRequest) string {
	if req.Raw {
		return req.Prompt
	}
	var turns []turn
	if req.System != "" {
		turns = append(turns, turn{role: "system", content: req.System})
	}
	turns = append(turns, turn{role: "user", content: req.Prompt})
	return renderChat(turns, nil)
}

// renderChat applies the chat template to messages. Tools go first in a
// system message, which makes them count as prompt tokens.
func renderChat(turns []turn, tools json.RawMessage) string {
	var b strings.Builder
	if hasFormat(tools) && !bytes.Equal(bytes.TrimSpace(tools), []byte("[]")) {
		writeTurn(&b, turn{role: "system", content: "Tools: " + string(tools)})
	}
	for _, t := range turns {
		writeTurn(&b, t)
	}
	b.WriteString("<|im_start|>assistant\n")
	return b.String()
}

func writeTurn(b *strings.Builder, t turn) {
	b.WriteString("<|im_start|>")
	b.WriteString(t.role)
	b.WriteString("\n")
	b.WriteString(t.content)
	b.WriteString("<|im_end|>\n")
}
