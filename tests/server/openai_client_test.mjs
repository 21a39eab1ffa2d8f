// The official `openai` npm client against `mixattn serve`: completions and chat, whole and
// streamed, /v1/models, and errors mapped to the client's exception classes. Every generated
// text must equal `mixattn generate` with the same prompt tokens, seed and sampling settings.
//
// Run by test_openai_client.py, which installs the client, makes the model and starts the server:
//   node openai_client_test.mjs --node-prefix DIR --base-url URL --api-key KEY \
//        --mixattn PATH --model DIR
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join } from 'node:path';

const args = {};
for (let i = 2; i < process.argv.length; i += 2) {
  args[process.argv[i].replace(/^--/, '')] = process.argv[i + 1];
}
// The client lives in the build tree (npm install --prefix), not beside this file.
const OpenAI = createRequire(join(args['node-prefix'], 'package.json'))('openai');

let passes = 0;
const failures = [];
function check(condition, what) {
  if (condition) {
    passes += 1;
  } else {
    failures.push(what);
    console.log(`FAIL: ${what}`);
  }
}

// `mixattn generate --json` on the same model: the reference text.
function generate(...flags) {
  const result = spawnSync(args.mixattn, ['generate', '--model', args.model, '--json', ...flags],
                           { encoding: 'utf8' });
  if (result.status !== 0) throw new Error(`generate failed: ${result.stderr}`);
  return JSON.parse(result.stdout);
}

async function tokenize(body) {
  const response = await fetch(`${args['base-url']}/tokenize`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', Authorization: `Bearer ${args['api-key']}` },
    body: JSON.stringify(body),
  });
  return (await response.json()).tokens;
}

async function expectError(what, ErrorClass, promise, param) {
  try {
    await promise;
    check(false, `${what}: no error`);
  } catch (error) {
    check(error instanceof ErrorClass,
          `${what}: ${ErrorClass.name}, got ${error.constructor.name}`);
    if (param !== undefined) check(error.param === param, `${what}: param ${error.param}`);
  }
}

const client = new OpenAI({ baseURL: `${args['base-url']}/v1`, apiKey: args['api-key'],
                            maxRetries: 0 });
const model = 'model';

// /v1/models
const models = await client.models.list();
check(models.data.length === 1 && models.data[0].id === model,
      `models.list: ${JSON.stringify(models.data)}`);

// Completions: whole and streamed, against generate with the same seed.
const prompt = 'the river was cold';
const sampling = { max_tokens: 24, seed: 7, temperature: 0.9, top_p: 0.95 };
const expected = generate('--prompt', prompt, '--max-tokens', '24', '--seed', '7',
                          '--temperature', '0.9', '--top-p', '0.95');
const completion = await client.completions.create({ model, prompt, ...sampling });
check(completion.choices[0].text === expected.text,
      `completion text equals generate: ${JSON.stringify(completion.choices[0].text)} vs ` +
      `${JSON.stringify(expected.text)}`);
check(completion.choices[0].finish_reason === expected.finish_reason,
      `completion finish_reason ${completion.choices[0].finish_reason}`);
check(completion.usage.completion_tokens === expected.tokens.length &&
      completion.usage.prompt_tokens === expected.usage.prompt_tokens,
      `completion usage ${JSON.stringify(completion.usage)}`);

let streamed = '';
let finish = null;
let usage = null;
const stream = await client.completions.create({ model, prompt, ...sampling, stream: true,
                                                 stream_options: { include_usage: true } });
for await (const chunk of stream) {
  if (chunk.choices.length > 0) {
    streamed += chunk.choices[0].text;
    finish = chunk.choices[0].finish_reason ?? finish;
  }
  if (chunk.usage) usage = chunk.usage;
}
check(streamed === expected.text,
      `streamed completion equals generate: ${JSON.stringify(streamed)}`);
check(finish === expected.finish_reason, `streamed finish_reason ${finish}`);
check(usage !== null && usage.completion_tokens === expected.tokens.length,
      `streamed usage ${JSON.stringify(usage)}`);

// Chat: the prompt is the model's stored template (chat_template.json), whose stop strings
// apply. generate gets the very tokens the server renders (/tokenize with messages).
const template = JSON.parse(readFileSync(join(args.model, 'chat_template.json'), 'utf8'));
const messages = [{ role: 'system', content: 'Answer in one line.' },
                  { role: 'user', content: 'Where does the old road go?' }];
const rendered = template.system.replace('{content}', messages[0].content) +
                 template.user.replace('{content}', messages[1].content) +
                 template.generation_prompt;
const chatTokens = await tokenize({ messages });
check(JSON.stringify(chatTokens) === JSON.stringify(await tokenize({ prompt: rendered })),
      'the chat prompt is the stored template rendered');
const chatExpected = generate('--prompt-tokens', chatTokens.join(','), '--max-tokens', '20',
                              '--seed', '4', '--temperature', '0.7',
                              ...template.stop.flatMap((stop) => ['--stop', stop]));
const chatSampling = { max_tokens: 20, seed: 4, temperature: 0.7 };
const chat = await client.chat.completions.create({ model, messages, ...chatSampling });
check(chat.choices[0].message.role === 'assistant' &&
      chat.choices[0].message.content === chatExpected.text,
      `chat content equals generate: ${JSON.stringify(chat.choices[0].message.content)} vs ` +
      `${JSON.stringify(chatExpected.text)}`);
check(chat.choices[0].finish_reason === chatExpected.finish_reason,
      `chat finish_reason ${chat.choices[0].finish_reason}`);

let chatStreamed = '';
let role = null;
let chatFinish = null;
const chatStream = await client.chat.completions.create({ model, messages, ...chatSampling,
                                                         stream: true });
for await (const chunk of chatStream) {
  const delta = chunk.choices[0]?.delta ?? {};
  role = delta.role ?? role;
  chatStreamed += delta.content ?? '';
  chatFinish = chunk.choices[0]?.finish_reason ?? chatFinish;
}
check(role === 'assistant' && chatStreamed === chatExpected.text,
      `streamed chat equals generate: ${JSON.stringify(chatStreamed)}`);
check(chatFinish === chatExpected.finish_reason, `streamed chat finish_reason ${chatFinish}`);

// Errors arrive as the client's own exception classes.
await expectError('max_tokens 0', OpenAI.BadRequestError,
                  client.completions.create({ model, prompt, max_tokens: 0 }), 'max_tokens');
await expectError('n = 2', OpenAI.BadRequestError,
                  client.chat.completions.create({ model, messages, n: 2 }), 'n');
const wrongKey = new OpenAI({ baseURL: `${args['base-url']}/v1`, apiKey: 'wrong', maxRetries: 0 });
await expectError('a wrong API key', OpenAI.AuthenticationError, wrongKey.models.list());

console.log(`openai_client: ${passes} checks passed, ${failures.length} failed`);
process.exit(failures.length > 0 ? 1 : 0);
