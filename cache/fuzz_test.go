package cache

import (
	"bytes"
	"context"
	"encoding/json"
	"testing"

	"github.com/llmproxy/llmproxy/config"
)

var fuzzRoutes = []string{
	"/api/generate", "/api/chat", "/v1/chat/completions", "/v1/completions",
	"/api/embed", "/api/embeddings", "/v1/embeddings",
}

// FuzzClassify checks that no body makes Classify, or the embedding path
// after it, panic, and that a rebuilt upstream body stays inside the
// request body's bytes.
func FuzzClassify(f *testing.F) {
	seeds := []string{
		`{"model":"m","input":["a","b","a"]}`,
		`{"model":"m","input":"a","truncate":false,"dimensions":8}`,
		`{"model":"m","prompt":"p","options":{"seed":1}}`,
		`{"model":"m","messages":[{"role":"user","content":"x"}],"options":{"temperature":0}}`,
		`{"model":"m","messages":[],"seed":1,"stream":true,"stream_options":{"include_usage":true}}`,
		`{"model":"m","input":["\"a\\\"",  "b" ] , "x":[1,{"y":"]"}]}`,
		`{"model":"m","input":[1,2]}`,
		`{"model":"m","Model":"n"}`,
		`[`, `"`, `{"model":`, ``,
	}
	for i, s := range seeds {
		f.Add(uint8(i), []byte(s))
	}
	c, err := New(config.Cache{}, nil, config.Redis{}, nil, nil)
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(c.Close)
	f.Fuzz(func(t *testing.T, routeIndex uint8, body []byte) {
		p := c.Classify(Request{Route: fuzzRoutes[int(routeIndex)%len(fuzzRoutes)], Body: body})
		if p.Kind != KindEmbed {
			return
		}
		b := c.LookupEmbeddings(context.Background(), p)
		up := b.UpstreamBody()
		if len(up) > len(body) {
			t.Errorf("upstream body of %d bytes from a request body of %d", len(up), len(body))
		}
	})
}

// FuzzAggregate checks that no upstream response makes the Aggregator or
// Store panic, and that whatever Store accepts renders both ways as valid
// JSON lines or events.
func FuzzAggregate(f *testing.F) {
	f.Add(uint8(0), []byte("{\"response\":\"a\",\"done\":false}\n{\"response\":\"\",\"done\":true,\"eval_count\":1}\n"))
	f.Add(uint8(1), []byte("{\"message\":{\"content\":\"a\",\"tool_calls\":[{\"function\":{\"name\":\"f\"}}]},\"done\":true}"))
	f.Add(uint8(2), []byte("data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"a\"},\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n"))
	f.Add(uint8(2), []byte(`{"choices":[{"index":0,"message":{"content":"a","tool_calls":[{"index":0,"function":{"arguments":"{}"}}]},"finish_reason":"stop"}]}`))
	f.Add(uint8(3), []byte("data: {\"choices\":[{\"text\":\"a\",\"index\":0,\"finish_reason\":\"length\"}],\"usage\":{}}\n\ndata: [DONE]\n\n"))
	f.Add(uint8(2), []byte("data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"a\"},\"finish_reason\":null,"+
		"\"logprobs\":{\"content\":[{\"token\":\"a\",\"logprob\":-1}]}}]}\n\n"+
		"data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\",\"logprobs\":{\"content\":null,\"x\":1}}]}\n\ndata: [DONE]\n\n"))
	bodies := []string{
		`{"model":"m","prompt":"p","options":{"seed":1}}`,
		`{"model":"m","messages":[{"role":"user","content":"x"}],"options":{"seed":1}}`,
		`{"model":"m","messages":[{"role":"user","content":"x"}],"seed":1,"stream":true,"stream_options":{"include_usage":true}}`,
		`{"model":"m","prompt":"p","seed":1}`,
	}
	c, err := New(config.Cache{}, nil, config.Redis{}, nil, nil)
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(c.Close)
	f.Fuzz(func(t *testing.T, routeIndex uint8, response []byte) {
		i := int(routeIndex) % len(bodies)
		p := c.Classify(Request{Route: fuzzRoutes[i], Body: []byte(bodies[i])})
		agg := c.NewAggregator(p)
		half := len(response) / 2
		_, _ = agg.Write(response[:half])
		_, _ = agg.Write(response[half:])
		e, err := c.Store(context.Background(), p, agg, true)
		if err != nil {
			return
		}
		for range 2 {
			body, _ := e.Render(p)
			assertJSONParts(t, body)
			p.Stream = !p.Stream
		}
	})
}

// assertJSONParts checks that every line of body, without an SSE "data: "
// prefix and apart from [DONE], is valid JSON.
func assertJSONParts(t *testing.T, body []byte) {
	t.Helper()
	for line := range bytes.SplitSeq(body, []byte("\n")) {
		line = bytes.TrimPrefix(line, []byte("data: "))
		if len(line) == 0 || string(line) == "[DONE]" {
			continue
		}
		if !json.Valid(line) {
			t.Fatalf("rendered line is not valid JSON: %s", line)
		}
	}
}
