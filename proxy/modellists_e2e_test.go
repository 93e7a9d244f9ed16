package proxy_test

import (
	"encoding/json"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/llmproxy/llmproxy/app"
	"github.com/llmproxy/llmproxy/config"
	"github.com/llmproxy/llmproxy/internal/testenv"
	"github.com/llmproxy/llmproxy/ollamasim"
)

// getAs sends GET url with the key named keyName, or without a key when
// keyName is empty, and returns the status and body.
func getAs(t *testing.T, url, keyName string) (int, []byte) {
	t.Helper()
	req, err := http.NewRequest("GET", url, nil)
	if err != nil {
		t.Fatal(err)
	}
	if keyName != "" {
		req.Header.Set("Authorization", "Bearer "+secretOf(keyName))
	}
	client := &http.Client{Timeout: 10 * time.Second}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	return resp.StatusCode, readBody(t, resp)
}

// listAs returns the names in the list at url that the key named keyName
// gets, taken from the key field of each object in the array arrayKey.
func listAs(t *testing.T, url, keyName, arrayKey, key string) []string {
	t.Helper()
	status, body := getAs(t, url, keyName)
	if status != http.StatusOK {
		t.Fatalf("GET %s as %q: status %d, body %s", url, keyName, status, body)
	}
	var fields map[string]json.RawMessage
	var items []map[string]any
	if err := json.Unmarshal(body, &fields); err != nil {
		t.Fatalf("GET %s as %q: body %s is not a JSON object: %v", url, keyName, body, err)
	}
	if err := json.Unmarshal(fields[arrayKey], &items); err != nil {
		t.Fatalf("GET %s as %q: %q in body %s is not a list: %v", url, keyName, arrayKey, body, err)
	}
	names := []string{}
	for _, item := range items {
		name, _ := item[key].(string)
		names = append(names, name)
	}
	slices.Sort(names)
	return names
}

// restrictedProxy starts a proxy in front of one node with four models
// and two keys: k1, whose allowed_models is "llama3" and "qwen*", and
// all, without allowed_models. It loads every model on the node.
func restrictedProxy(t *testing.T, required bool) *app.App {
	t.Helper()
	run := testenv.Sim(t, "llama3:8b,llama3,qwen2.5:7b,mistral:7b", ollamasim.Config{MaxLoaded: 4})
	cfg := testenv.Config(t, run)
	k1 := limitKey("k1")
	k1.AllowedModels = []string{"llama3", "qwen*"}
	cfg.Auth.Required = required
	cfg.Auth.Keys = []config.Key{k1, limitKey("all")}
	p := testenv.Proxy(t, cfg)
	for _, m := range []string{"llama3:8b", "llama3:latest", "qwen2.5:7b", "mistral:7b"} {
		resp := post(t, p.URL()+"/api/generate", `{"model":"`+m+`","stream":false}`, bearer("all")...)
		if body := readBody(t, resp); resp.StatusCode != http.StatusOK {
			t.Fatalf("load %s: status %d, body %s", m, resp.StatusCode, body)
		}
	}
	return p
}

// TestModelListsFollowAllowedModels checks that /api/tags, /api/ps and
// /v1/models list only the models a key may use. A key without
// allowed_models, and a request without a key, get every model. The keys
// alternate, so one key's list reaching the next key would show.
func TestModelListsFollowAllowedModels(t *testing.T) {
	every := []string{"llama3:8b", "llama3:latest", "mistral:7b", "qwen2.5:7b"}
	// "llama3" means llama3:latest only, as in the 403 check of requests.
	allowed := []string{"llama3:latest", "qwen2.5:7b"}
	lists := []struct{ path, arrayKey, key string }{
		{"/api/tags", "models", "name"},
		{"/api/ps", "models", "name"},
		{"/v1/models", "data", "id"},
	}
	for _, required := range []bool{true, false} {
		p := restrictedProxy(t, required)
		callers := []struct {
			key  string
			want []string
		}{
			{"all", every},
			{"k1", allowed},
			{"all", every},
			{"k1", allowed},
		}
		if !required {
			callers = append(callers, struct {
				key  string
				want []string
			}{"", every})
		}
		for _, l := range lists {
			for _, c := range callers {
				got := listAs(t, p.URL()+l.path, c.key, l.arrayKey, l.key)
				if !slices.Equal(got, c.want) {
					t.Errorf("required=%v: %s as %q lists %v, want %v", required, l.path, c.key, got, c.want)
				}
			}
		}
	}
}

// TestModelListMatchesRequestCheck checks that /api/tags lists to k1
// exactly the models that /api/show serves to it, so a listed model does
// not fail with 403 when picked.
func TestModelListMatchesRequestCheck(t *testing.T) {
	p := restrictedProxy(t, true)
	listed := listAs(t, p.URL()+"/api/tags", "k1", "models", "name")
	for _, m := range []string{"llama3:8b", "llama3:latest", "qwen2.5:7b", "mistral:7b"} {
		resp := post(t, p.URL()+"/api/show", `{"model":"`+m+`"}`, bearer("k1")...)
		body := readBody(t, resp)
		showAllowed := resp.StatusCode == http.StatusOK
		if !showAllowed && resp.StatusCode != http.StatusForbidden {
			t.Fatalf("show %s: status %d, body %s", m, resp.StatusCode, body)
		}
		if slices.Contains(listed, m) != showAllowed {
			t.Errorf("%s: listed %v, but show gets status %d", m, slices.Contains(listed, m), resp.StatusCode)
		}
	}
}

// TestOpenAIModelHiddenFromKey checks that /v1/models/{model} responds to
// a model the key may not use exactly as to a model that no node has.
func TestOpenAIModelHiddenFromKey(t *testing.T) {
	p := restrictedProxy(t, true)

	status, body := getAs(t, p.URL()+"/v1/models/qwen2.5:7b", "k1")
	if status != http.StatusOK {
		t.Errorf("allowed model: status %d, body %s; want 200", status, body)
	}
	unknownStatus, unknownBody := getAs(t, p.URL()+"/v1/models/nosuch:7b", "k1")
	if unknownStatus != http.StatusNotFound {
		t.Fatalf("unknown model: status %d, body %s; want 404", unknownStatus, unknownBody)
	}
	for _, m := range []string{"mistral:7b", "llama3:8b", "MISTRAL:7b"} {
		status, body := getAs(t, p.URL()+"/v1/models/"+m, "k1")
		if status != http.StatusNotFound {
			t.Errorf("%s: status %d, want 404 as for an unknown model", m, status)
		}
		want := strings.ReplaceAll(string(unknownBody), "nosuch:7b", m)
		if string(body) != want {
			t.Errorf("%s: body %s, want %s", m, body, want)
		}
		if status, body := getAs(t, p.URL()+"/v1/models/"+m, "all"); status != http.StatusOK {
			t.Errorf("%s as all: status %d, body %s; want 200", m, status, body)
		}
	}
}

// TestOpenAIModelsOwnedBy checks that owned_by on /v1/models is the
// namespace of each name, as Ollama derives it, on the proxy and on the
// simulated node alike.
func TestOpenAIModelsOwnedBy(t *testing.T) {
	want := map[string]string{
		"llama3:8b":                    "library",
		"myuser/m:latest":              "myuser",
		"hf.co/foo/bar:Q4_K_M":         "foo",
		"example.com:5000/ns/m:latest": "ns",
	}
	run := testenv.Sim(t, "llama3:8b,myuser/m:latest,hf.co/foo/bar:Q4_K_M,example.com:5000/ns/m",
		ollamasim.Config{})
	p := testenv.Proxy(t, testenv.Config(t, run))

	for _, base := range []string{p.URL(), run.URL()} {
		status, body := getAs(t, base+"/v1/models", "")
		if status != http.StatusOK {
			t.Fatalf("%s/v1/models: status %d, body %s", base, status, body)
		}
		var list struct {
			Data []struct {
				ID      string `json:"id"`
				OwnedBy string `json:"owned_by"`
			} `json:"data"`
		}
		if err := json.Unmarshal(body, &list); err != nil {
			t.Fatalf("%s/v1/models: body %s: %v", base, body, err)
		}
		got := map[string]string{}
		for _, m := range list.Data {
			got[m.ID] = m.OwnedBy
		}
		for id, owner := range want {
			if got[id] != owner {
				t.Errorf("%s/v1/models: %s owned_by %q, want %q", base, id, got[id], owner)
			}
		}
		for id, owner := range want {
			if strings.Contains(id, "/") {
				// Ollama's route /v1/models/:model takes one path segment,
				// so the proxy and the node send the router's 404 for a
				// name with a slash.
				status, body := getAs(t, base+"/v1/models/"+id, "")
				if status != http.StatusNotFound {
					t.Errorf("%s/v1/models/%s: status %d, body %s; want 404", base, id, status, body)
				}
				if string(body) != "404 page not found" {
					t.Errorf("%s/v1/models/%s: body %q, want the router's 404 text", base, id, body)
				}
				continue
			}
			status, body := getAs(t, base+"/v1/models/"+id, "")
			var m struct {
				OwnedBy string `json:"owned_by"`
			}
			if err := json.Unmarshal(body, &m); status != http.StatusOK || err != nil {
				t.Fatalf("%s/v1/models/%s: status %d, body %s", base, id, status, body)
			}
			if m.OwnedBy != owner {
				t.Errorf("%s/v1/models/%s: owned_by %q, want %q", base, id, m.OwnedBy, owner)
			}
		}
	}
}
