package ollamasim_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"

	openai "github.com/sashabaranov/go-openai"

	"github.com/llmproxy/llmproxy/ollamasim"
)

// The tests in this file drive the /v1 routes with an OpenAI Go client.

func openAIClient(n *node) *openai.Client {
	cfg := openai.DefaultConfig("unused")
	cfg.BaseURL = n.URL() + "/v1"
	cfg.HTTPClient = n.http
	return openai.NewClientWithConfig(cfg)
}

func TestOpenAIChat(t *testing.T) {
	n := startNode(t, ollamasim.Config{})
	client := openAIClient(n)

	resp, err := client.CreateChatCompletion(context.Background(), openai.ChatCompletionRequest{
		Model:     "llama3:8b",
		Messages:  []openai.ChatCompletionMessage{{Role: "user", Content: "Hello"}},
		MaxTokens: 5,
	})
	if err != nil {
		t.Fatalf("CreateChatCompletion: %v", err)
	}
	if !strings.HasPrefix(resp.ID, "chatcmpl-") || resp.Object != "chat.completion" {
		t.Errorf("id %q, object %q", resp.ID, resp.Object)
	}
	if len(resp.Choices) != 1 {
		t.Fatalf("%d choices, want 1", len(resp.Choices))
	}
	choice := resp.Choices[0]
	if choice.Message.Role != "assistant" || choice.Message.Content == "" {
		t.Errorf("message = %+v", choice.Message)
	}
	if choice.FinishReason != openai.FinishReasonLength {
		t.Errorf("finish_reason = %q, want length", choice.FinishReason)
	}
	if resp.Usage.CompletionTokens != 5 || resp.Usage.TotalTokens != resp.Usage.PromptTokens+5 {
		t.Errorf("usage = %+v", resp.Usage)
	}
}

func TestOpenAIChatStream(t *testing.T) {
	n := startNode(t, ollamasim.Config{})
	client := openAIClient(n)

	stream, err := client.CreateChatCompletionStream(context.Background(), openai.ChatCompletionRequest{
		Model:         "llama3:8b",
		Messages:      []openai.ChatCompletionMessage{{Role: "user", Content: "Hello"}},
		Stream:        true,
		StreamOptions: &openai.StreamOptions{IncludeUsage: true},
		Seed:          ptr(3),
	})
	if err != nil {
		t.Fatalf("CreateChatCompletionStream: %v", err)
	}
	defer stream.Close()

	var content strings.Builder
	var finish openai.FinishReason
	var usage *openai.Usage
	for {
		chunk, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("Recv: %v", err)
		}
		if chunk.Usage != nil {
			usage = chunk.Usage
			continue
		}
		content.WriteString(chunk.Choices[0].Delta.Content)
		if chunk.Choices[0].FinishReason != "" {
			finish = chunk.Choices[0].FinishReason
		}
	}
	if content.Len() == 0 || finish != openai.FinishReasonStop {
		t.Errorf("content %q, finish_reason %q", content.String(), finish)
	}
	if usage == nil || usage.CompletionTokens == 0 || usage.PromptTokens == 0 {
		t.Errorf("usage chunk = %+v, want token counts", usage)
	}
}

func TestOpenAICompletion(t *testing.T) {
	n := startNode(t, ollamasim.Config{})
	client := openAIClient(n)
	ctx := context.Background()

	resp, err := client.CreateCompletion(ctx, openai.CompletionRequest{
		Model: "llama3:8b", Prompt: "Once upon a time", MaxTokens: 4,
	})
	if err != nil {
		t.Fatalf("CreateCompletion: %v", err)
	}
	if resp.Object != "text_completion" || resp.Choices[0].Text == "" || resp.Usage.CompletionTokens != 4 {
		t.Errorf("completion = %+v", resp)
	}

	stream, err := client.CreateCompletionStream(ctx, openai.CompletionRequest{
		Model: "llama3:8b", Prompt: "Once upon a time", MaxTokens: 4, Stream: true,
	})
	if err != nil {
		t.Fatalf("CreateCompletionStream: %v", err)
	}
	defer stream.Close()
	chunks := 0
	for {
		_, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("Recv: %v", err)
		}
		chunks++
	}
	if chunks != 5 {
		t.Errorf("stream sent %d chunks, want 4 tokens and a final one", chunks)
	}
}

func TestOpenAIEmbeddings(t *testing.T) {
	n := startNode(t, ollamasim.Config{})
	client := openAIClient(n)
	ctx := context.Background()

	for _, format := range []openai.EmbeddingEncodingFormat{openai.EmbeddingEncodingFormatFloat, openai.EmbeddingEncodingFormatBase64} {
		t.Run(string(format), func(t *testing.T) {
			resp, err := client.CreateEmbeddings(ctx, openai.EmbeddingRequestStrings{
				Model:          "nomic-embed-text",
				Input:          []string{"alpha", "beta"},
				EncodingFormat: format,
			})
			if err != nil {
				t.Fatalf("CreateEmbeddings: %v", err)
			}
			if len(resp.Data) != 2 || resp.Data[1].Index != 1 {
				t.Fatalf("data = %+v", resp.Data)
			}
			if got := len(resp.Data[0].Embedding); got != ollamasim.DefaultEmbeddingDims {
				t.Errorf("vector has %d dimensions", got)
			}
			if resp.Usage.PromptTokens != 2 {
				t.Errorf("usage = %+v, want 2 prompt tokens", resp.Usage)
			}
		})
	}
}

func TestOpenAIModels(t *testing.T) {
	n := startNode(t, ollamasim.Config{})
	client := openAIClient(n)
	ctx := context.Background()

	list, err := client.ListModels(ctx)
	if err != nil {
		t.Fatalf("ListModels: %v", err)
	}
	if len(list.Models) != len(defaultModels) || list.Models[0].OwnedBy != "library" {
		t.Errorf("ListModels = %+v", list.Models)
	}
	model, err := client.GetModel(ctx, "llama3:8b")
	if err != nil {
		t.Fatalf("GetModel: %v", err)
	}
	if model.ID != "llama3:8b" || model.Object != "model" {
		t.Errorf("GetModel = %+v", model)
	}
}

func TestOpenAIErrors(t *testing.T) {
	n := startNode(t, ollamasim.Config{})
	client := openAIClient(n)
	ctx := context.Background()
	message := []openai.ChatCompletionMessage{{Role: "user", Content: "Hello"}}

	tests := []struct {
		name     string
		model    string
		status   int
		kind     string
		contains string
	}{
		{"missing model", "absent", http.StatusNotFound, "not_found_error", "not found"},
		{"embedding model", "nomic-embed-text", http.StatusBadRequest, "invalid_request_error", "does not support chat"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := client.CreateChatCompletion(ctx, openai.ChatCompletionRequest{Model: tt.model, Messages: message})
			var apiErr *openai.APIError
			if !errors.As(err, &apiErr) {
				t.Fatalf("error %v, want an APIError", err)
			}
			if apiErr.HTTPStatusCode != tt.status || apiErr.Type != tt.kind || !strings.Contains(apiErr.Message, tt.contains) {
				t.Errorf("APIError = %+v, want status %d, type %s", apiErr, tt.status, tt.kind)
			}
		})
	}
}

// TestOpenAIModelsOwnedBy checks that owned_by is the namespace of the
// name, as in Ollama, and not the host or its port.
func TestOpenAIModelsOwnedBy(t *testing.T) {
	want := map[string]string{
		"llama3:8b":                    "library",
		"myuser/m:latest":              "myuser",
		"hf.co/foo/bar:Q4_K_M":         "foo",
		"example.com:5000/ns/m:latest": "ns",
	}
	var specs []ollamasim.ModelSpec
	for name := range want {
		specs = append(specs, ollamasim.ModelSpec{Name: name})
	}
	n := startNode(t, ollamasim.Config{Models: specs})
	client := openAIClient(n)
	ctx := context.Background()

	list, err := client.ListModels(ctx)
	if err != nil {
		t.Fatalf("ListModels: %v", err)
	}
	if len(list.Models) != len(want) {
		t.Errorf("ListModels has %d models, want %d", len(list.Models), len(want))
	}
	for _, m := range list.Models {
		if m.OwnedBy != want[m.ID] {
			t.Errorf("ListModels: %s owned_by %q, want %q", m.ID, m.OwnedBy, want[m.ID])
		}
	}
	for id, owner := range want {
		m, err := client.GetModel(ctx, id)
		if strings.Contains(id, "/") {
			// Ollama's /v1/models/:model matches one path segment, so a
			// name with a slash gets the router's 404.
			if err == nil {
				t.Errorf("GetModel(%q) succeeded, want the router's 404", id)
			}
			continue
		}
		if err != nil {
			t.Fatalf("GetModel(%q): %v", id, err)
		}
		if m.OwnedBy != owner {
			t.Errorf("GetModel(%q): owned_by %q, want %q", id, m.OwnedBy, owner)
		}
	}
}
