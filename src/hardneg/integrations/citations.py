"""BibTeX of hardneg's losses and of BACL's BNS, for the sentence-transformers model cards."""

from __future__ import annotations

from hardneg.losses import (
    DCLLoss,
    DecoupledInfoNCELoss,
    EGALoss,
    HCLLoss,
    InfoNCELoss,
    SigLIPLoss,
    SoftInfoNCELoss,
)

#: BibTeX of BACL (arXiv:2511.08399), cited when negatives are selected by BNS.
BACL_CITATION = """
@inproceedings{bacl2025,
    title={Aligning by Misaligning: Boundary-aware Curriculum Learning for Multimodal Alignment},
    booktitle={Advances in Neural Information Processing Systems},
    year={2025},
    eprint={2511.08399},
    archivePrefix={arXiv},
}
"""

#: BibTeX of each loss family (looked up along the loss class's MRO).
CITATIONS: dict[type, str] = {
    InfoNCELoss: """
@misc{oord2018representation,
    title={Representation Learning with Contrastive Predictive Coding},
    author={Aaron van den Oord and Yazhe Li and Oriol Vinyals},
    year={2018},
    eprint={1807.03748},
    archivePrefix={arXiv},
}
""",
    EGALoss: """
@misc{ega2025,
    title={Improve Multi-Modal Embedding Learning via Explicit Hard Negative Gradient Amplifying},
    year={2025},
    eprint={2506.02020},
    archivePrefix={arXiv},
}
""",
    HCLLoss: """
@inproceedings{robinson2021contrastive,
    title={Contrastive Learning with Hard Negative Samples},
    author={Joshua Robinson and Ching-Yao Chuang and Suvrit Sra and Stefanie Jegelka},
    booktitle={International Conference on Learning Representations},
    year={2021},
}
""",
    DCLLoss: """
@inproceedings{chuang2020debiased,
    title={Debiased Contrastive Learning},
    author={Ching-Yao Chuang and Joshua Robinson and Lin Yen-Chen and Antonio Torralba and
            Stefanie Jegelka},
    booktitle={Advances in Neural Information Processing Systems},
    year={2020},
}
""",
    DecoupledInfoNCELoss: """
@inproceedings{yeh2022decoupled,
    title={Decoupled Contrastive Learning},
    author={Chun-Hsiao Yeh and Cheng-Yao Hong and Yen-Chi Hsu and Tyng-Luh Liu and Yubei Chen
            and Yann LeCun},
    booktitle={European Conference on Computer Vision},
    year={2022},
}
""",
    SoftInfoNCELoss: """
@inproceedings{li2023rethinking,
    title={Rethinking Negative Pairs in Code Search},
    author={Haochen Li and Xin Zhou and Luu Anh Tuan and Chunyan Miao},
    booktitle={Proceedings of the 2023 Conference on Empirical Methods in Natural Language
               Processing},
    year={2023},
}
""",
    SigLIPLoss: """
@inproceedings{zhai2023sigmoid,
    title={Sigmoid Loss for Language Image Pre-Training},
    author={Xiaohua Zhai and Basil Mustafa and Alexander Kolesnikov and Lucas Beyer},
    booktitle={International Conference on Computer Vision},
    year={2023},
}
""",
}
