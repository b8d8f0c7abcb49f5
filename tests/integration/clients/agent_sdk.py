"""A Python program built on the Claude Agent SDK (PyPI claude-agent-sdk): the SDK starts its own
bundled, native Claude Code as a child process and talks to it over pipes; Claude Code makes the
Messages API calls (to ANTHROPIC_BASE_URL: the mock server in the tests) and runs the Bash tool in
a shell of its own. Prints one line per message the SDK hands back, then "result: <text>".

usage: agent_sdk.py PROMPT
"""
import sys

import anyio
from claude_agent_sdk import AssistantMessage, ClaudeAgentOptions, ResultMessage, TextBlock, query


async def main(prompt: str) -> int:
    options = ClaudeAgentOptions(allowed_tools=["Bash"], max_turns=4,
                                 stderr=lambda line: print("claude:", line, file=sys.stderr))
    result = None
    async for message in query(prompt=prompt, options=options):
        print(type(message).__name__, flush=True)
        if isinstance(message, AssistantMessage):
            for block in message.content:
                if isinstance(block, TextBlock):
                    print("text:", block.text, flush=True)
        if isinstance(message, ResultMessage):
            result = message.result
    print("result:", result, flush=True)
    return 0 if result else 1


if __name__ == "__main__":
    sys.exit(anyio.run(main, sys.argv[1] if len(sys.argv) > 1 else "say hi"))
