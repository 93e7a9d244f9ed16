package proxy_test

import (
	"context"
	"errors"
	"io"
	"testing"

	openai "github.com/sashabaranov/go-openai"

	"github.com/llmproxy/llmproxy/ollamasim"
)

func openAIClient(f *fleet) *openai.Client {
	cfg := openai.DefaultConfig("unused")
	cfg.BaseURL = f.proxy.URL() + "/v1"
	return openai.NewClientWithConfig(cfg)
}

func TestOpenAIChat(t *testing.T) {
	f := newFleet(t, ollamasim.Config{})
	c := openAIClient(f)
	ctx := context.Background()
	req := openai.ChatCompletionRequest{
		Model:    "m",
		Messages: []openai.ChatCompletionMessage{{Role: "user", Content: "hello"}},
	}
	resp, err := c.CreateChatCompletion(ctx, req)
	if err != nil {
		t.Fatalf("chat: %v", err)
	}
	if len(resp.Choices) != 1 || resp.Choices[0].Message.Content == "" || resp.Usage.TotalTokens == 0 {
		t.Errorf("chat response %+v", resp)
	}

	req.StreamOptions = &openai.StreamOptions{IncludeUsage: true}
	stream, err := c.CreateChatCompletionStream(ctx, req)
	if err != nil {
		t.Fatalf("stream: %v", err)
	}
	defer stream.Close()
	var content string
	var usage *openai.Usage
	for {
		chunk, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("recv: %v", err)
		}
		if len(chunk.Choices) > 0 {
			content += chunk.Choices[0].Delta.Content
		}
		if chunk.Usage != nil {
			usage = chunk.Usage
		}
	}
	if content == "" || usage == nil || usage.CompletionTokens == 0 {
		t.Errorf("stream content %q, usage %+v", content, usage)
	}
}

func TestOpenAICompletionsAndEmbeddings(t *testing.T) {
	f := newFleet(t, ollamasim.Config{})
	c := openAIClient(f)
	ctx := context.Background()
	comp, err := c.CreateCompletion(ctx, openai.CompletionRequest{Model: "m", Prompt: "once", MaxTokens: 5})
	if err != nil || len(comp.Choices) != 1 || comp.Choices[0].Text == "" {
		t.Fatalf("completion %+v, %v", comp, err)
	}
	emb, err := c.CreateEmbeddings(ctx, openai.EmbeddingRequest{
		Model: "embed-e", Input: []string{"a", "b"},
	})
	if err != nil || len(emb.Data) != 2 || emb.Data[1].Index != 1 {
		t.Fatalf("embeddings %+v, %v", emb, err)
	}
	models, err := c.ListModels(ctx)
	if err != nil || len(models.Models) != 3 {
		t.Fatalf("models %+v, %v", models, err)
	}
	m, err := c.GetModel(ctx, "other")
	if err != nil || m.ID != "other" {
		t.Fatalf("model %+v, %v", m, err)
	}
	_, err = c.GetModel(ctx, "missing")
	var apiErr *openai.APIError
	if !errors.As(err, &apiErr) || apiErr.HTTPStatusCode != 404 {
		t.Fatalf("missing model: %v, want a 404 API error", err)
	}
}
