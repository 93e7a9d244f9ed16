package proxy

import (
	"strings"
	"testing"
)

func TestScanFinal(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   string
		want finalStats
	}{
		{"ollama done", `{"model":"m","response":"hi","done":true,"context":[1,2,3],"total_duration":900,` +
			`"load_duration":100,"prompt_eval_count":12,"prompt_eval_duration":50,"eval_count":34,"eval_duration":700}`,
			finalStats{done: true, promptTokens: 12, completionTokens: 34, loadNs: 100, totalNs: 900, evalNs: 700}},
		{"not done", `{"model":"m","response":"hi","done":false,"eval_count":3}`, finalStats{}},
		{"spaces", `{"done": true, "eval_count" : 7, "prompt_eval_count":	2}`,
			finalStats{done: true, completionTokens: 7, promptTokens: 2}},
		{"keys quoted in the answer", `{"response":"say \"eval_count\":99 and \"done\":true","done":true,"eval_count":5}`,
			finalStats{done: true, completionTokens: 5}},
		{"string value equal to a key", `{"response":"\"done\"","note":"done","done":true,"eval_count":1}`,
			finalStats{done: true, completionTokens: 1}},
		{"openai usage", `{"id":"x","choices":[],"usage":{"prompt_tokens":9,"completion_tokens":4,"total_tokens":13}}`,
			finalStats{usage: true, promptTokens: 9, completionTokens: 4}},
		{"responses usage", `{"id":"x","usage":{"input_tokens":6,"output_tokens":2}}`,
			finalStats{usage: true, promptTokens: 6, completionTokens: 2}},
		{"usage null", `{"id":"x","usage":null,"done":true,"eval_count":1}`,
			finalStats{done: true, completionTokens: 1}},
		{"float is not a count", `{"done":true,"eval_count":1.5,"prompt_eval_count":1e3}`, finalStats{done: true}},
		{"overflow", `{"done":true,"eval_count":99999999999999999999}`, finalStats{done: true}},
		{"negative", `{"done":true,"eval_duration":-5}`, finalStats{done: true, evalNs: -5}},
		{"truncated", `{"done":true,"eval_count":`, finalStats{done: true}},
		{"ollama embed", `{"model":"e","embeddings":[[0.1,-0.2]],"total_duration":90,"load_duration":10,"prompt_eval_count":5}`,
			finalStats{embed: true, promptTokens: 5}},
		{"embed without counts", `{"model":"e","embeddings":[[0.1]]}`, finalStats{}},
		{"same keys in tool call arguments", `{"message":{"role":"assistant","tool_calls":[{"function":` +
			`{"name":"f","arguments":{"done":false,"eval_count":3,"usage":{"prompt_tokens":1}}}}]},` +
			`"done":true,"eval_count":8,"prompt_eval_count":2}`,
			finalStats{done: true, completionTokens: 8, promptTokens: 2}},
		{"openai usage after choices with the same keys", `{"choices":[{"message":{"tool_calls":[{"function":` +
			`{"arguments":"{}"}}]},"done":true}],"usage":{"prompt_tokens":3,"completion_tokens":4}}`,
			finalStats{usage: true, promptTokens: 3, completionTokens: 4}},
		{"empty", ``, finalStats{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := scanFinal([]byte(tc.in)); got != tc.want {
				t.Errorf("scanFinal(%s)\n got %+v\nwant %+v", tc.in, got, tc.want)
			}
		})
	}
}

func BenchmarkScanFinal(b *testing.B) {
	line := []byte(`{"model":"llama3:8b","created_at":"2026-01-01T00:00:00Z","response":"` +
		"a reasonably long answer of a few hundred bytes, as a non-streamed response carries. " +
		"a reasonably long answer of a few hundred bytes, as a non-streamed response carries." +
		`","done":true,"done_reason":"stop","context":[1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16],` +
		`"total_duration":123456789,"load_duration":1234567,"prompt_eval_count":26,` +
		`"prompt_eval_duration":2345678,"eval_count":290,"eval_duration":98765432}`)
	b.ReportAllocs()
	for b.Loop() {
		if st := scanFinal(line); st.completionTokens != 290 {
			b.Fatal(st)
		}
	}
}

// FuzzScanFinal checks that scanFinal takes any bytes without panicking,
// reports counts only for an object it recognised, and agrees with itself
// when the input has extra spaces after each colon.
func FuzzScanFinal(f *testing.F) {
	f.Add(`{"done":true,"prompt_eval_count":3,"eval_count":5,"eval_duration":10}`)
	f.Add(`{"usage":{"prompt_tokens":9,"completion_tokens":4}}`)
	f.Add(`{"response":"\"done\":true","done":false}`)
	f.Add(`"done":`)
	f.Fuzz(func(t *testing.T, in string) {
		st := scanFinal([]byte(in))
		if !st.usage && !st.done && !st.embed && st != (finalStats{}) {
			t.Errorf("scanFinal(%q) = %+v: counts without a final object", in, st)
		}
		spaced := scanFinal([]byte(strings.ReplaceAll(in, `":`, `": `)))
		if spaced != st && !strings.Contains(in, `": `) {
			t.Errorf("scanFinal(%q) = %+v, but %+v with spaces after the colons", in, st, spaced)
		}
	})
}

func TestFinalObjectAcceptsSpacedJSON(t *testing.T) {
	cases := []struct {
		name, line string
		sse, want  bool
		object     string
	}{
		{"compact done", `{"done":true,"eval_count":2}`, false, true, `{"done":true,"eval_count":2}`},
		{"spaced done", `{"done" : true, "eval_count": 2}`, false, true, `{"done" : true, "eval_count": 2}`},
		{"not done", `{"done": false}`, false, false, ""},
		{"done as a value first", `{"status":"done","done": true}`, false, true, `{"status":"done","done": true}`},
		{"done only as a value", `{"status":"done"}`, false, false, ""},
		{"sse with space", `data: {"usage":{"prompt_tokens":1}}`, true, true, `{"usage":{"prompt_tokens":1}}`},
		{"sse without space", `data:{"usage":{"prompt_tokens":1}}`, true, true, `{"usage":{"prompt_tokens":1}}`},
		{"sse without usage", `data: {"choices":[]}`, true, false, ""},
		{"sse done marker", `data: [DONE]`, true, false, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			object, ok := finalObject([]byte(c.line), c.sse)
			if ok != c.want {
				t.Fatalf("ok %v, want %v", ok, c.want)
			}
			if ok && string(object) != c.object {
				t.Errorf("object %q, want %q", object, c.object)
			}
		})
	}
}
