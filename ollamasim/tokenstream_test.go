package ollamasim_test

import (
	"context"
	"testing"

	"github.com/ollama/ollama/api"

	"github.com/llmproxy/llmproxy/ollamasim"
)

func TestTokenStreamLengthWithinBounds(t *testing.T) {
	srv := ollamasim.New(ollamasim.Config{MinTokens: 20, MaxTokens: 40})
	t.Cleanup(func() { srv.Close() })
	for i := range 50 {
		tokens := srv.NewTokenStream()
		var pieces []string
		for {
			piece, last := tokens.Next()
			pieces = append(pieces, piece)
			if last {
				break
			}
			if len(pieces) > 40 {
				t.Fatalf("stream %d: more than 40 pieces: %q", i, pieces)
			}
		}
		if len(pieces) < 20 {
			t.Errorf("stream %d: %d pieces, want 20 to 40", i, len(pieces))
		}
		if end := pieces[len(pieces)-1]; end != "." {
			t.Errorf("stream %d: last piece %q, want \".\"", i, end)
		}
		if piece, last := tokens.Next(); piece != "" || !last {
			t.Errorf("stream %d: Next after the end = %q, %v, want \"\", true", i, piece, last)
		}
	}
}

func TestCountChatPromptTokensMatchesColdChat(t *testing.T) {
	n := startNode(t, ollamasim.Config{})
	messages := []api.Message{
		{Role: "system", Content: "You are brief."},
		{Role: "user", Content: "Tell me a story, please!"},
	}
	stream := false
	var final api.ChatResponse
	err := n.client.Chat(context.Background(),
		&api.ChatRequest{Model: "llama3:8b", Messages: messages, Stream: &stream},
		func(r api.ChatResponse) error { final = r; return nil })
	if err != nil {
		t.Fatalf("chat: %v", err)
	}

	var counted []ollamasim.ChatMessage
	for _, m := range messages {
		counted = append(counted, ollamasim.ChatMessage{Role: m.Role, Content: m.Content})
	}
	if got, want := ollamasim.CountChatPromptTokens(counted), final.PromptEvalCount; got != want {
		t.Errorf("CountChatPromptTokens = %d, want the cold chat's prompt_eval_count %d", got, want)
	}
}

func TestModelReadyAfterLoad(t *testing.T) {
	n := startNode(t, ollamasim.Config{})
	if n.srv.ModelReady("llama3:8b") {
		t.Error("ModelReady before any request = true, want false")
	}
	if n.srv.ModelReady("nope") {
		t.Error("ModelReady of an unknown model = true, want false")
	}

	load := func(model string, options map[string]any) {
		t.Helper()
		err := n.client.Chat(context.Background(),
			&api.ChatRequest{Model: model, Options: options},
			func(api.ChatResponse) error { return nil })
		if err != nil {
			t.Fatalf("load %s: %v", model, err)
		}
	}
	load("llama3:8b", nil)
	if !n.srv.ModelReady("LLAMA3:8b") {
		t.Error("ModelReady after a load = false, want true, whatever the case of the name")
	}

	load("llama3:8b", map[string]any{"num_ctx": 2048})
	if n.srv.ModelReady("llama3:8b") {
		t.Error("ModelReady with the model loaded for another num_ctx = true, want false")
	}

	_, err := n.client.Embed(context.Background(),
		&api.EmbedRequest{Model: "nomic-embed-text", Input: "load"})
	if err != nil {
		t.Fatalf("embed: %v", err)
	}
	if n.srv.ModelReady("nomic-embed-text") {
		t.Error("ModelReady of an embedding model = true, want false")
	}
}
