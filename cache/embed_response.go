package cache

import (
	"fmt"
	"strconv"

	"github.com/valyala/fastjson"
)

// embedResponse is a whole embedding response: one vector and its prompt
// token count per input, in input order, and the durations of the request.
type embedResponse struct {
	vectors [][]byte // each a JSON array of numbers
	tokens  []int64
	// totalDuration and loadDuration are in nanoseconds, as Ollama reports
	// them.
	totalDuration, loadDuration int64
}

// embedUsage contains the usage fields of an upstream embedding response.
type embedUsage struct {
	// promptTokens is prompt_eval_count on /api/embed and
	// usage.prompt_tokens on /v1/embeddings.
	promptTokens int64
	// totalDuration and loadDuration are /api/embed's, in nanoseconds.
	totalDuration, loadDuration int64
}

// parseEmbedResponse returns the vectors of an upstream embedding response,
// in input order, with its usage fields.
func parseEmbedResponse(r route, body []byte) ([][]byte, embedUsage, error) {
	parser := parsers.Get()
	defer releaseParser(parser, len(body))
	v, err := parseStrict(parser, body)
	if err != nil {
		return nil, embedUsage{}, err
	}
	if v.Type() != fastjson.TypeObject {
		return nil, embedUsage{}, fmt.Errorf("%w: not a JSON object", ErrInvalidResponse)
	}
	if v.Exists("error") {
		return nil, embedUsage{}, fmt.Errorf("%w: error response", ErrInvalidResponse)
	}

	switch r {
	case routeEmbed:
		vectors, err := readVectors(v.GetArray("embeddings"))
		return vectors, embedUsage{
			promptTokens:  v.GetInt64("prompt_eval_count"),
			totalDuration: v.GetInt64("total_duration"),
			loadDuration:  v.GetInt64("load_duration"),
		}, err
	case routeEmbeddings:
		vector, err := readVector(v.Get("embedding"))
		return [][]byte{vector}, embedUsage{}, err
	default:
		vectors, err := readV1Data(v.GetArray("data"))
		return vectors, embedUsage{promptTokens: v.GetInt64("usage", "prompt_tokens")}, err
	}
}

func readVectors(arr []*fastjson.Value) ([][]byte, error) {
	out := make([][]byte, len(arr))
	for i, e := range arr {
		var err error
		if out[i], err = readVector(e); err != nil {
			return nil, fmt.Errorf("embedding %d: %w", i, err)
		}
	}
	return out, nil
}

// readV1Data returns the vectors of an OpenAI embedding list, ordered by
// their index members.
func readV1Data(data []*fastjson.Value) ([][]byte, error) {
	out := make([][]byte, len(data))
	for _, d := range data {
		idx := d.Get("index")
		if idx == nil {
			return nil, fmt.Errorf("%w: embedding without index", ErrInvalidResponse)
		}
		i, err := idx.Int()
		if err != nil || i < 0 || i >= len(out) || out[i] != nil {
			return nil, fmt.Errorf("%w: embedding index %s", ErrInvalidResponse, idx)
		}
		if out[i], err = readVector(d.Get("embedding")); err != nil {
			return nil, fmt.Errorf("embedding %d: %w", i, err)
		}
	}
	return out, nil
}

// readVector returns a copy of a non-empty JSON array of numbers, from an
// response that parseStrict has validated.
func readVector(v *fastjson.Value) ([]byte, error) {
	if v == nil || v.Type() != fastjson.TypeArray || len(v.GetArray()) == 0 {
		return nil, fmt.Errorf("%w: embedding is not a non-empty array", ErrInvalidResponse)
	}
	out := make([]byte, 0, 12*len(v.GetArray()))
	out = append(out, '[')
	for i, n := range v.GetArray() {
		if i > 0 {
			out = append(out, ',')
		}
		if n.Type() != fastjson.TypeNumber {
			return nil, fmt.Errorf("%w: embedding contains a non-number", ErrInvalidResponse)
		}
		out = n.MarshalTo(out)
	}
	return append(out, ']'), nil
}

// render returns the response in the format of route r for the model name
// the client sent. The usage fields are written even when zero, so that a
// cached response has the same fields as a node's.
func (er *embedResponse) render(r route, model string) ([]byte, string) {
	size := 128 + len(model)
	for _, v := range er.vectors {
		size += len(v) + 48
	}
	out := make([]byte, 0, size)
	switch r {
	case routeEmbeddings:
		out = append(out, `{"embedding":`...)
		out = append(out, er.vectors[0]...)
		return append(out, '}'), contentTypeJSONUTF8
	case routeV1Embeddings:
		return er.renderV1(out, model), contentTypeJSON
	}
	out = append(out, `{"model":`...)
	out = appendString(out, model)
	out = append(out, `,"embeddings":[`...)
	for i, v := range er.vectors {
		if i > 0 {
			out = append(out, ',')
		}
		out = append(out, v...)
	}
	out = append(out, ']')
	out = appendIntField(out, "total_duration", er.totalDuration)
	out = appendIntField(out, "load_duration", er.loadDuration)
	out = appendIntField(out, "prompt_eval_count", er.promptTokens())
	return append(out, '}'), contentTypeJSONUTF8
}

// promptTokens returns the prompt tokens of every input, which is what
// upstream would report for the whole request.
func (er *embedResponse) promptTokens() int64 {
	var n int64
	for _, t := range er.tokens {
		n += t
	}
	return n
}

func (er *embedResponse) renderV1(out []byte, model string) []byte {
	out = append(out, `{"object":"list","data":[`...)
	for i, v := range er.vectors {
		if i > 0 {
			out = append(out, ',')
		}
		out = append(out, `{"object":"embedding","embedding":`...)
		out = append(out, v...)
		out = append(out, `,"index":`...)
		out = strconv.AppendInt(out, int64(i), 10)
		out = append(out, '}')
	}
	out = append(out, `],"model":`...)
	out = appendString(out, model)
	// Ollama 0.17 (openai/openai.go) reports prompt_eval_count as both
	// counts.
	tokens := er.promptTokens()
	out = append(out, `,"usage":{"prompt_tokens":`...)
	out = strconv.AppendInt(out, tokens, 10)
	out = append(out, `,"total_tokens":`...)
	out = strconv.AppendInt(out, tokens, 10)
	return append(out, "}}"...)
}

// appendIntField appends ,"name":n.
func appendIntField(out []byte, name string, n int64) []byte {
	out = append(out, ',', '"')
	out = append(out, name...)
	out = append(out, '"', ':')
	return strconv.AppendInt(out, n, 10)
}
