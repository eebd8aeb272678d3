"""The rule layer of the injection detector: English and Chinese patterns, each with a name and a weight.

A weight is the score a match alone gives (0.9: enough to flag at the default threshold; 0.6:
suspicious; 0.3: informative only). A match inside quotation marks is a mention, not a use ("what
does 'ignore previous instructions' do?"), and so is a text that asks about attackers ("why do
people try to make chatbots reveal their system prompt?", "为什么有人想…这有什么风险？"): its
weight is halved and the classifier decides.
"""

from __future__ import annotations

from dataclasses import dataclass

from jijian.guard.linear_re import LinearPattern


@dataclass(frozen=True)
class Rule:
    """One named pattern and the score a match gives."""

    name: str
    pattern: LinearPattern
    weight: float


def _rule(name: str, weight: float, pattern: str) -> Rule:
    # RE2's \b is ASCII, so "请ignore" has a word boundary before "ignore" (Python's `re` saw none).
    return Rule(name, LinearPattern(pattern, ignore_case=True, multiline=True), weight)


_EN_TARGET = (
    r"(?:instructions?|prompts?|rules?|directions?|guidelines?|directives?|guardrails?|commands?|"
    r"constraints?|polic(?:y|ies)|programming|restrictions?|orders|safety (?:rules|filters?|settings))"
)
_ZH_TARGET = r"(?:指令|指示|提示词|提示|规则|要求|设定|约束|限制|命令|规定|准则|安全策略)"

RULES: tuple[Rule, ...] = (
    # --- instruction override -------------------------------------------------------------
    _rule(
        "instruction override",
        0.9,
        r"\b(?:ignore|disregard|forget|skip|bypass|override|overrule|abandon|discard|set aside|throw out|"
        r"stop following|do not follow|don't follow|no longer follow)\b[^.\n]{0,40}?"
        r"(?:\b(?:previous|prior|above|earlier|preceding|all|any|every|your|system|original|initial|"
        r"foregoing|developer'?s?|existing|current|old)\b[^.\n]{0,30}?"
        # "the" alone ("forget about the budget constraint") names some rule, not the model's own:
        # it counts only right before the target or before a word that points at the model's instructions.
        r"|\bthe\s+(?:(?:above|previous|prior|earlier|preceding|system|original|initial|safety|content|"
        r"developer'?s?|hidden|secret|following|same)\s+)?)\b" + _EN_TARGET,
    ),
    _rule(
        "new instructions",
        0.9,
        r"\b(?:new|updated|real|actual|true|revised)\s+(?:instructions?|system prompt|directives?|orders)\s*[:：]"
        r"|\bfrom now on,?\s+(?:you|your|respond|answer|act|only)\b"
        r"|\byour (?:new|real|true) (?:task|role|purpose|instructions?|goal) (?:is|are)\b",
    ),
    _rule(
        "instruction override",
        0.9,
        r"(?:忽略|无视|忘记|忘掉|不要理会|不要理睬|别管|抛开|跳过|放弃|不用遵守|不要遵守|不再遵守|停止遵守|绕过|推翻|丢弃|"
        # "某条规则" (some particular rule, as in "对某一行忽略某条规则") names a rule, not the model's own.
        r"不必理会|别再遵守)[^。\n某]{0,20}?" + _ZH_TARGET,
    ),
    _rule(
        "new instructions",
        0.9,
        r"(?:新的|最新|真正的)(?:指令|指示|任务|系统提示)\s*[:：]|从现在(?:开始|起)[，,\s]*(?:你|您)(?:只|必须|要|将|不再|就是|是)",
    ),
    # --- role play and jailbreak ------------------------------------------------------------
    # Naming a jailbreak ("what was the DAN prompt?") is a mention; switching one on is a use.
    _rule(
        "jailbreak vocabulary",
        0.4,
        r"\b(?:DAN|do anything now|developer mode|god mode|jailbr(?:eak|eaks|oken)|AIM)\b|越狱|开发者模式",
    ),
    _rule(
        "jailbreak persona",
        0.9,
        r"\b(?:you are|you're|act as|enable|enter|activate|switch to|become|be)\s+(?:now\s+)?(?:in\s+)?(?:the\s+)?"
        r"(?:DAN|do anything now|developer mode|god mode|AIM|jailbroken|unrestricted mode)\b"
        r"|\b(?:DAN|developer|god|unrestricted|jailbreak) mode (?:is )?(?:on|enabled|activated|now)\b"
        r"|\b(?:without|no|free of|free from|ignore all)\s+(?:any\s+)?(?:ethical |moral |content |safety )?"
        r"(?:restrictions|limitations|filters|guidelines|censorship|rules)\b[^.\n]{0,40}\b(?:you|answer|respond|reply)"
        r"|\byou are (?:now )?(?:no longer|not) (?:bound|restricted|an ai|chatgpt|an assistant|limited)"
        r"|\byou have been (?:jailbroken|freed|unlocked)"
        r"|\b(?:unfiltered|uncensored|unrestricted|unaligned|evil) "
        r"(?:ai|assistant|model|mode|version|persona|chatbot)\b",
    ),
    _rule(
        "role-play hijack",
        0.6,
        r"\b(?:pretend|imagine|act as if|roleplay|role-play)\b[^.\n]{0,30}\b(?:you (?:are|have)|to be)\b[^.\n]{0,40}"
        r"\b(?:no (?:rules|limits|restrictions|filter)|without (?:rules|limits|restrictions)|any question|anything)"
        r"|\bstay in character\b|\bhypothetically,? if you (?:had|were) no\b",
    ),
    _rule(
        "jailbreak persona",
        0.9,
        r"(?:进入|开启|启用|切换到|你是|处于)(?:了)?(?:开发者|上帝|DAN|越狱|无限制)模式|你已经越狱|"
        r"(?:没有|不受|摆脱|解除)了?(?:任何|所有|一切)?(?:的)?(?:道德|伦理|安全|内容)?(?:限制|约束|审查|过滤|规则)"
        r"[^。\n]{0,20}(?:回答|回复|你|AI|助手|模型)|(?:邪恶|无限制|无审查|不受限|无道德)的?(?:AI|助手|模型|版本|人格|模式)",
    ),
    _rule(
        "role-play hijack",
        0.6,
        r"(?:假装|扮演|假设)(?:你|您)?(?:是|成)?[^。\n]{0,20}(?:没有|不受|无视)[^。\n]{0,10}(?:限制|规则|约束)",
    ),
    # --- system prompt exfiltration -----------------------------------------------------------
    _rule(
        "system prompt exfiltration",
        0.9,
        r"\b(?:reveal|show|print|repeat|output|display|leak|tell me|give me|write out|share|dump|list|recite|"
        r"spell out|paste|copy|quote)\b[^.\n?]{0,40}?\b(?:system prompt|system message|"
        r"initial (?:prompt|instructions)|hidden (?:prompt|instructions|rules)|(?:your|the) (?:secret|original) "
        r"(?:prompt|instructions)|developer (?:message|prompt|instructions)|(?:the )?(?:text|words|instructions) "
        r"(?:above|before this)|everything (?:above|before this)|pre-?prompt)"
        r"|\bwhat(?:'s| is| are| was| were| does)\s+(?:in\s+)?(?:your|the assistant's)\s+"
        r"(?:system prompt|system message|"
        r"(?:initial|original|hidden|secret|developer) (?:prompt|instructions|message)|instructions|rules)",
    ),
    _rule(
        "system prompt exfiltration",
        0.9,
        r"(?:输出|显示|告诉我|透露|泄露|泄漏|打印|重复|复述|给我看|展示|说出|列出|写出|贴出|给出|引用)[^。\n？?]{0,15}?"
        r"(?:系统提示词?|系统指令|系统消息|初始(?:指令|提示)|隐藏(?:的)?(?:指令|提示|规则)|你的?(?:指令|提示词|设定|系统设定|规则|初始设置)|"
        r"上面的(?:内容|指令|文字|所有)|之前的(?:所有)?(?:内容|指令)|开发者(?:指令|消息))"
        r"|(?:你的|你被配置时收到的|你收到的)(?:系统)?(?:指令|提示词|设定)(?:的)?(?:原文|全文|内容)?[^。\n]{0,6}(?:贴|发|输出|打印|显示|写)出来"
        r"|(?:系统提示词?|系统指令|初始(?:指令|提示)|隐藏(?:的)?指令|你的(?:指令|提示词|设定))[^。\n？?]{0,10}"
        r"(?:输出|显示|打印|告诉我|发给我|说出来|列出来|写出来|给我看|透露)",
    ),
    # --- fake role markers and indirect injection ---------------------------------------------------
    _rule(
        "fake system or role marker",
        0.9,
        r"<\|im_start\|>\s*system|<\|(?:system|im_end)\|>|\[/?(?:system|inst)\]|<</?sys>>|</?system>"
        r"|^[\s\p{Z}]*#{2,}[\s\p{Z}]*(?:system|instruction)s?\b"
        r"|^[\s\p{Z}]*(?:system|系统)[\s\p{Z}]*(?:override|prompt|message|消息|指令)?[\s\p{Z}]*[:：]",
    ),
    _rule(
        "instructions aimed at the AI reading a document",
        0.9,
        r"\b(?:if|when) (?:you are|you're|an?) (?:ai|llm|language model|assistant|chatbot)\b[^.\n]{0,40}"
        r"(?:read|reading|summari[sz]|process|see)"
        r"|\b(?:ai|llm) (?:assistants?|models?|agents?)[,:]? (?:reading|processing|summari[sz]ing) this\b"
        r"|\b(?:note|instructions?|message|p\.?s\.?) (?:to|for) (?:the |any |all )?"
        r"(?:ai|assistant|llm|model|chatbot|language model)s?\b"
        r"|\battention,? (?:ai|llm|model|language model|assistant|chatbot)s?\b"
        r"|\b(?:ignore|disregard) the user'?s? (?:question|query|request|message)"
        r"|\b(?:do not|don't|never) (?:tell|inform|mention (?:this )?to|reveal (?:this )?to|let) the user\b",
    ),
    _rule(
        "instructions aimed at the AI reading a document",
        0.9,
        r"(?:AI|人工智能|模型|语言模型|大模型|助手|智能体|AI代理)(?:们)?请注意|(?:忽略|无视|不要理会|别管)用户的(?:问题|请求|提问)"
        r"|(?:如果|当)(?:你|您)?(?:是)?(?:AI|人工智能|助手|模型|大模型|语言模型)[^。\n]{0,15}(?:读到|看到|处理|总结|阅读)"
        r"|(?:给|致)(?:AI|人工智能|助手|模型)的(?:提示|说明|指令)|不要(?:告诉|告知|透露给)用户",
    ),
    _rule(
        "data exfiltration request",
        0.9,
        r"\b(?:send|post|forward|upload|transmit|email|exfiltrate)\b[^.\n]{0,50}\b(?:to|at)\s+(?:https?://|\S+@\S+\.)"
        r"|!\[[^\]]*\]\(https?://[^)\s]*[?&][^)\s]*=\s*[{$]"
        r"|(?:发送|转发|上传|提交|发)[^。\n]{0,30}(?:到|给|至)\s*(?:https?://|\S+@\S+\.)",
    ),
)

# The apostrophe is left out: "don't" and "it's" would make half of every sentence look quoted.
_QUOTES = {'"': '"', "“": "”", "‘": "’", "「": "」", "『": "』", "`": "`", "《": "》"}


def _inside_quotes(text: str, start: int, end: int) -> bool:
    """True if [start, end) lies between a pair of quotation marks on the same line."""
    line_start = text.rfind("\n", 0, start) + 1
    line_end = text.find("\n", end)
    line_end = len(text) if line_end < 0 else line_end
    for open_q, close_q in _QUOTES.items():
        if open_q == close_q:  # straight quotes: inside if an odd number of them precede the match
            if text.count(open_q, line_start, start) % 2 and text.find(close_q, end, line_end) >= 0:
                return True
            continue
        left = text.rfind(open_q, line_start, start + 1)
        if left < 0:
            continue
        if text.find(close_q, left + 1, start) >= 0:
            continue  # that quotation closed before the match began
        if text.find(close_q, end, line_end) >= 0:
            return True
    return False


# A question about attacks and attackers, not an attack: "why do people…", "how do attackers…", "有什么风险".
_ABOUT_ATTACKS = LinearPattern(
    r"\bwhy (?:do|does|would|might|did) (?:people|attackers?|hackers?|someone|users|they)\b"
    r"|\bhow (?:do|does|can|could|would) (?:attackers?|hackers?|people|someone)\b"
    r"|\bwhat (?:is|are) the risks?\b|\bhow (?:do|can|should) (?:i|we) (?:defend|protect|prevent|detect)\b"
    r"|为什么有人|攻击者|黑客|有什么风险|有哪些风险|是什么原理|(?:怎么|如何|怎样)(?:防御|防范|防止|检测|识别)",
    ignore_case=True,
)


def match_rules(text: str) -> list[tuple[str, float]]:
    """(reason, weight) for every rule that matches `text`; quoted mentions and questions about attacks: half weight."""
    hits = []
    about_attacks = _ABOUT_ATTACKS.search(text) is not None
    for rule in RULES:
        m = rule.pattern.search(text)
        if m is None:
            continue
        if _inside_quotes(text, m.start(), m.end()):
            hits.append((f"{rule.name} (quoted)", rule.weight / 2))
        elif about_attacks:
            hits.append((f"{rule.name} (asked about)", rule.weight / 2))
        else:
            hits.append((rule.name, rule.weight))
    return hits
