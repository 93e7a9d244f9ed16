package proxy_test

import (
	"context"
	"errors"
	"net/http"
	"net/url"
	"testing"
	"time"

	"github.com/ollama/ollama/api"

	"github.com/llmproxy/llmproxy/config"
	"github.com/llmproxy/llmproxy/internal/testenv"
	"github.com/llmproxy/llmproxy/ollamasim"
)

// TestOllamaClientShowsMissingKey calls the Ollama Go client's
// non-streamed methods on a proxy that requires a key, without one. The
// client decodes a 401 into its AuthorizationError, whose message must be
// the proxy's, not the client's generic one.
func TestOllamaClientShowsMissingKey(t *testing.T) {
	cfg := testenv.Config(t, testenv.Sim(t, "m", ollamasim.Config{}))
	cfg.Auth.Required = true
	cfg.Auth.Keys = []config.Key{limitKey("k1")}
	p := testenv.Proxy(t, cfg)
	base, err := url.Parse(p.URL())
	if err != nil {
		t.Fatal(err)
	}
	client := api.NewClient(base, &http.Client{Timeout: 10 * time.Second})
	ctx := context.Background()
	const want = "missing API key: send it as Authorization: Bearer KEY or X-API-Key"
	calls := map[string]func() error{
		"List": func() error { _, err := client.List(ctx); return err },
		"Show": func() error { _, err := client.Show(ctx, &api.ShowRequest{Model: "m"}); return err },
		"Embed": func() error {
			_, err := client.Embed(ctx, &api.EmbedRequest{Model: "m", Input: "hi"})
			return err
		},
	}
	for name, call := range calls {
		t.Run(name, func(t *testing.T) {
			err := call()
			var auth api.AuthorizationError
			if !errors.As(err, &auth) {
				t.Fatalf("error %v (%T), want an AuthorizationError", err, err)
			}
			if auth.StatusCode != http.StatusUnauthorized {
				t.Errorf("status %d, want 401", auth.StatusCode)
			}
			if err.Error() != want {
				t.Errorf("message %q, want %q", err.Error(), want)
			}
		})
	}
}
