package cache

import (
	"encoding/json"
	"errors"
	"maps"
	"slices"
	"strings"
	"testing"
)

// memberNames returns the sorted top-level member names of the JSON
// object body, and fails the test when body is not one object.
func memberNames(t *testing.T, body []byte) []string {
	t.Helper()
	var object map[string]json.RawMessage
	if err := json.Unmarshal(body, &object); err != nil {
		t.Fatalf("not one JSON object: %v\n%s", err, body)
	}
	return slices.Sorted(maps.Keys(object))
}

func TestMergeStreamHasOllamaShape(t *testing.T) {
	cases := []struct {
		route, stream, whole string
		// withoutUsage is set for a /v1 stream recorded without
		// stream_options.include_usage, which carries no usage to merge.
		withoutUsage bool
	}{
		{"/api/chat", "chat_stream.body", "chat_nostream.body", false},
		{"/api/generate", "generate_stream.body", "generate_nostream.body", false},
		{"/v1/chat/completions", "openai_chat_stream_usage.body", "openai_chat_nostream.body", false},
		{"/v1/completions", "openai_completions_stream.body", "openai_completions.body", true},
	}
	for _, c := range cases {
		t.Run(c.route, func(t *testing.T) {
			merged, contentType, err := MergeStream(c.route, "tiny", readTestdata(t, c.stream))
			if err != nil {
				t.Fatalf("MergeStream: %v", err)
			}
			want := memberNames(t, readTestdata(t, c.whole))
			if c.withoutUsage {
				want = slices.DeleteFunc(want, func(name string) bool { return name == "usage" })
			}
			if got := memberNames(t, merged); !slices.Equal(got, want) {
				t.Errorf("members %q, want those of Ollama's non-streamed response %q", got, want)
			}
			if !strings.HasPrefix(contentType, "application/json") {
				t.Errorf("content type %q, want application/json", contentType)
			}
		})
	}
}

func TestMergeStreamJoinsText(t *testing.T) {
	stream := `{"model":"m","response":"one ","done":false}` + "\n" +
		`{"model":"m","response":"two","done":false}` + "\n" +
		`{"model":"m","response":"","done":true,"done_reason":"stop","eval_count":2}` + "\n"
	merged, _, err := MergeStream("/api/generate", "m:latest", []byte(stream))
	if err != nil {
		t.Fatal(err)
	}
	var got struct {
		Model      string `json:"model"`
		Response   string `json:"response"`
		Done       bool   `json:"done"`
		DoneReason string `json:"done_reason"`
		EvalCount  int    `json:"eval_count"`
	}
	if err := json.Unmarshal(merged, &got); err != nil {
		t.Fatalf("%v\n%s", err, merged)
	}
	if got.Response != "one two" {
		t.Errorf("response %q, want the joined text %q", got.Response, "one two")
	}
	if !got.Done || got.DoneReason != "stop" || got.EvalCount != 2 {
		t.Errorf("merged %s, want the final line's done, done_reason and eval_count", merged)
	}
	if got.Model != "m:latest" {
		t.Errorf("model %q, want the name the request used", got.Model)
	}
}

func TestMergeStreamRejects(t *testing.T) {
	chatStream := string(readTestdata(t, "chat_stream.body"))
	lines := strings.SplitAfter(chatStream, "\n")
	cases := []struct {
		name, route, stream string
		want                error
	}{
		{"route without merged form", "/v1/messages", chatStream, ErrNotCacheable},
		{"embedding route", "/api/embed", chatStream, ErrNotCacheable},
		{"no done line", "/api/chat", strings.Join(lines[:3], ""), ErrIncomplete},
		{"error mid-stream", "/api/chat", lines[0] + `{"error":"model crashed"}` + "\n", ErrInvalidResponse},
		{"not JSON", "/api/chat", "<html>bad gateway</html>", ErrInvalidResponse},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			body, _, err := MergeStream(c.route, "tiny", []byte(c.stream))
			if !errors.Is(err, c.want) {
				t.Errorf("error %v, want %v", err, c.want)
			}
			if body != nil {
				t.Errorf("body %s returned with the error", body)
			}
		})
	}
}
